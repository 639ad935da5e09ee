"""`python -m gossip_agent` is the `gossip-agent` command."""

import sys

from gossip_agent import cli

sys.exit(cli.main())
