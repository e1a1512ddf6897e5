"""`python -m unetkit.infer` is unet-infer, so torchrun can start it: torchrun --nproc-per-node N -m unetkit.infer"""

from .cli import main

raise SystemExit(main())
