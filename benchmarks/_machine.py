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
