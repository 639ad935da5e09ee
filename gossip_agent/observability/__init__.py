"""What operators look through: logs, metrics, the live console, and the telemetry plug point.

  telemetry  the Protocol the engine and the leader report events to, and its in-memory Recorder
  metrics    telemetry and engine state as Prometheus metrics (only module importing
             prometheus_client)
  console    the aiomonitor console's commands (only module importing aiomonitor)
  logs       text or JSON log lines
  observe    wires metrics and the console into one agent
"""
