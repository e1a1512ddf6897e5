"""`python -m unetkit.infer` is unet-infer, so torchrun can start it: torchrun --nproc-per-node N -m unetkit.infer"""

from unetkit.core.launch import infer

raise SystemExit(infer())
