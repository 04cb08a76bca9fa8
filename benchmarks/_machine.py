"""What the benchmark scripts print about the machine they ran on."""


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or 'unknown'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cpu_and_torch(threads: int) -> str:
    """'<CPU>; torch <version>, CPU capability <ISA>, <threads> thread(s)'."""
    import torch

    return (
        f"{cpu_name()}; torch {torch.__version__}, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, {threads} thread(s)"
    )
