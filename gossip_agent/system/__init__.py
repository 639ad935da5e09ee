"""The lowest layer every backend builds on: the systems the agent talks to, and nothing more.

  bpfsys      the bpf() syscalls through libbcc (pinned maps, batches, bpffs checks, flock) and
              MapSpec, the shape of a pinned map; used by the data plane and the bpffs lease
  kubeclient  how every Kubernetes module finds the API server (one rule for lease, source
              and scaler)

Siblings, independent of each other; nothing here imports the layers above.
"""
