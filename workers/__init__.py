"""What runs on Ray: training recipes and serving engines (never imports `service`)."""

import logging

# bitsandbytes (the `qlora` extra) warns at import, through peft, on CPUs with AVX512-bf16
# that an optional kernel package is missing, which it would fetch from a model hub: every
# job log and replica would say so. The pure-torch path it falls back to is what runs.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
