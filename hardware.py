"""The machine a run trains on: the device, the memory still free there, the CPU's name, and how fast its fp32 and
bf16 products are.

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


def check_memory(need, what, device_type="cpu"):
    """ValueError when what needs more bytes than a device of this type has free: the one free-memory check."""
    free = available_memory(device_type)
    if free is not None and need > free:
        raise ValueError(f"{what} needs about {gigabytes(need)} of memory; {gigabytes(free)} is available")


def gigabytes(n):
    """A size in bytes for people: 3 significant digits of GB."""
    return f"{n / 1e9:.3g} GB"


def cpu_name():
    """This CPU's model name, read from /proc/cpuinfo (Linux); "unknown" elsewhere."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return "unknown"


def product_seconds(device, config, rows, repeats=5):
    """Seconds one training step's matrix products of the model's layer shapes take on device in fp32 and in
    bf16, (fp32, bf16): each layer's forward product on a batch of rows, the medians of repeats alternating
    runs (a fraction of a second in all). Whether bf16 pays is measured, never guessed from the CPU's flags."""
    import statistics
    import time

    import torch
    layers = [(a, b) for widths in (config.encoder_widths(), config.decoder_widths())
              for a, b in zip(widths[:-1], widths[1:], strict=True)]
    times = {torch.float32: [], torch.bfloat16: []}
    operands = {dtype: [(torch.randn(rows, a, device=device, dtype=dtype), torch.randn(a, b, device=device,
                                                                                        dtype=dtype))
                        for a, b in layers] for dtype in times}
    for _ in range(repeats + 1):  # the first round warms up and is not counted
        for dtype, pairs in operands.items():
            synchronize(device)
            t0 = time.perf_counter()
            for x, w in pairs:
                x @ w
            synchronize(device)
            times[dtype].append(time.perf_counter() - t0)
    return tuple(statistics.median(times[dtype][1:]) for dtype in times)


def synchronize(device):
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU needs nothing)."""
    if device.type == "cuda":
        import torch
        torch.cuda.synchronize(device)
