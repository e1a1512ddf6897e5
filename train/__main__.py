"""`python -m unetkit.train` is unet-train, so torchrun can start it: torchrun --nproc-per-node N -m unetkit.train"""

from unetkit.core.launch import train

raise SystemExit(train())
