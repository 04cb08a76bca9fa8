"""ddkit: denoising diffusion models (DDPM, DDIM, score SDE), verified against exact ground truth."""

from .denoiser import Denoiser
from .parameterization import Prediction
from .schedule import DATA, NoiseSchedule, timesteps

__version__ = "0.1.0"
__all__ = ["DATA", "Denoiser", "NoiseSchedule", "Prediction", "timesteps", "__version__"]
