"""The machine a run trains on: the device, the memory still free there, and whether the CPU has AMX.

torch is imported only by the functions that need a device, so the command line's other checks stay fast.
"""
import contextlib

DEVICES = ("auto", "cpu", "cuda", "mps")


def missing_device(name):
    """Why the device --device names is not there (None when it is, or for auto and cpu)."""
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        return "no CUDA device is available"
    if name == "mps" and not torch.backends.mps.is_available():
        return "no MPS device is available"
    return None


def pick_device(name):
    """The torch.device for a --device name; auto: CUDA, then MPS, then CPU."""
    import torch
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def available_memory(device_type="cpu"):
    """Bytes a run can still allocate on a device of this type (CUDA: free GPU memory; else the system's
    MemAvailable), or None where that is not known."""
    if device_type == "cuda":
        import torch
        return torch.cuda.mem_get_info()[0]
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            return int(next(line for line in f if line.startswith("MemAvailable:")).split()[1]) * 1024
    return None


def gigabytes(n):
    """A size in bytes for people: 3 significant digits of GB."""
    return f"{n / 1e9:.3g} GB"


def cpu_info():
    """This CPU's model name and whether it has AMX, read from /proc/cpuinfo (Linux); ("unknown", False) elsewhere.

    bf16 products pay on a CPU only with AMX: with AVX-512 BF16 alone they ran slower than fp32.
    """
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return "unknown", False
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                "unknown")
    return name, " amx_bf16" in text or " amx_tile" in text
