"""Other libraries' formats: diffusers' ``UNet2DModel`` and scheduler configs, and its
pipeline folders, read into and written from ddkit's U-Net and noise schedules exactly."""

from .folder import is_diffusers_folder, read_diffusers, write_diffusers
from .unet import InteropError

__all__ = ["InteropError", "is_diffusers_folder", "read_diffusers", "write_diffusers"]
