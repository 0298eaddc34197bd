"""Shared machinery of the torch detector families.

Everything a neural detector needs besides its network: device selection,
seeded and deterministic training, normalisation learned in ``fit``, windowing,
one epoch loop for in-process and Ray Train fitting alike (Adam, mini-batches,
chronological validation split, early stopping on the best weights, a hook
after every epoch), chunked inference, and persistence.

:class:`TorchDetector` turns a small network into a :class:`Detector`. A
subclass declares its parameters, builds its network in ``_build_net``, says
how a normalised series becomes (input window, target) pairs in ``_pairs``
and how a network output becomes a per-window error in ``_window_errors``.
The raw score is that error divided by the root-mean-square error on the
validation windows of the fit data, so it is dimensionless and comparable
across series. The same pairs are used to train and to score, so training and
serving share one code path.

Saved state is plain arrays (``net.<param>`` for the network, ``norm.*``,
``score_scale`` and ``history.*``): :meth:`Detector.save` writes it as
``.npz`` and :meth:`TorchDetector.save_torch` as a tensor-only ``torch.save``
file that loads with ``weights_only=True``. Neither needs pickle.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from eyenet.core import detectors
from eyenet.core.detectors.base import Constraint, Detector, as_series, interval, one_of
from eyenet.core.errors import ArtifactError, InvalidParameterError, NotFittedError

DEVICES = ("auto", "cpu", "cuda")
#: windows per forward pass when scoring long series
SCORE_CHUNK = 4096
#: gradients are clipped to this global norm (keeps recurrent nets stable at high lr)
GRAD_CLIP = 1.0
#: a validation loss counts as an improvement when it beats the best by this fraction
MIN_REL_IMPROVEMENT = 1e-3
#: lower bound of the error scale, in normalised units (a perfectly predictable
#: series would otherwise turn rounding noise into huge scores)
SCALE_FLOOR = 1e-3

EpochCallback = Callable[[dict[str, Any]], None]


# -- pluggable training backends ---------------------------------------------------------------
@dataclass
class TrainJob:
    """Everything needed to train one network anywhere: the detector config and its (input, target) pairs.

    The last ``n_val`` rows are the chronological validation split.
    """

    detector: dict[str, Any]
    inputs: np.ndarray
    targets: np.ndarray
    n_val: int


@dataclass
class TrainOutcome:
    """Trained weights (``net.<param>`` arrays), per-epoch records and the best epoch."""

    weights: dict[str, np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    info: dict[str, Any] = field(default_factory=dict)


TrainBackend = Callable[[TrainJob, "EpochCallback | None"], TrainOutcome]
_BACKEND: contextvars.ContextVar[TrainBackend | None] = contextvars.ContextVar("eyenet_train_backend", default=None)


@contextlib.contextmanager
def training_backend(backend: TrainBackend | None) -> Iterator[None]:
    """Train every torch network fitted inside the block with ``backend`` (e.g. Ray Train).

    Ensemble members and plain detectors alike; ``None`` trains in-process.
    """
    token = _BACKEND.set(backend)
    try:
        yield
    finally:
        _BACKEND.reset(token)


# -- devices and seeding ---------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``; ``"cuda"`` (must be available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InvalidParameterError(
                f"device='cuda' was requested but CUDA is not available here (torch {torch.__version__}); "
                "use device='cpu' or device='auto'"
            )
        return torch.device("cuda")
    raise InvalidParameterError(f"device={name!r} must be one of {list(DEVICES)}")


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[np.random.Generator]:
    """Seeded, deterministic block for training; yields a numpy Generator for shuffling.

    Torch's global RNG is forked, so the caller's random state is left as it was,
    and deterministic algorithms are switched on (warn-only) just for the block.
    """
    devices = [device.index or 0] if device.type == "cuda" else []
    was_on = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield np.random.default_rng(seed)
        finally:
            torch.use_deterministic_algorithms(was_on, warn_only=was_warn_only)


# -- normalisation and windows ----------------------------------------------------------
class Normaliser:
    """Affine map ``(x - center) / scale`` learned from the fit data.

    ``robust``: median and IQR / 1.349 (equals the std for Gaussian data);
    ``standard``: mean and std. A zero spread falls back to the std, then to 1.
    """

    def __init__(self, center: float = 0.0, scale: float = 1.0) -> None:
        self.center = float(center)
        self.scale = float(scale)

    @classmethod
    def fit(cls, x: np.ndarray, method: str = "robust") -> "Normaliser":
        if method == "robust":
            q1, center, q3 = np.percentile(x, [25, 50, 75])
            scale = (q3 - q1) / 1.349
        elif method == "standard":
            center, scale = float(np.mean(x)), float(np.std(x))
        else:
            raise InvalidParameterError(f"normalisation {method!r} must be one of ['robust', 'standard']")
        tiny = 1e-12 * max(1.0, abs(float(center)))
        if not scale > tiny:
            scale = float(np.std(x))
        if not scale > tiny:
            scale = 1.0
        return cls(float(center), float(scale))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x - self.center) / self.scale

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return z * self.scale + self.center

    def state(self) -> dict[str, np.ndarray]:
        return {"norm.center": np.asarray(self.center), "norm.scale": np.asarray(self.scale)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> "Normaliser":
        return cls(float(state["norm.center"]), float(state["norm.scale"]))


def windows(x: np.ndarray, window: int) -> np.ndarray:
    """Read-only view of shape ``(len(x) - window + 1, window)``; row k is ``x[k : k + window]``."""
    return sliding_window_view(x, int(window))


def validation_size(n_windows: int, val_fraction: float) -> int:
    """Windows held out for validation: the last ``val_fraction``, at least 1, leaving at least 1."""
    return min(n_windows - 1, max(1, int(round(n_windows * val_fraction))))


def to_tensor(a: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return t if device.type == "cpu" else t.to(device)


def predict(net: nn.Module, inputs: np.ndarray, device: torch.device, chunk: int = SCORE_CHUNK) -> Iterator[np.ndarray]:
    """Network outputs for ``inputs``, one float64 array per chunk of ``chunk`` rows."""
    with torch.inference_mode():
        for start in range(0, len(inputs), chunk):
            yield net(to_tensor(inputs[start : start + chunk], device)).cpu().numpy().astype(np.float64)


# -- training --------------------------------------------------------------------------
@dataclass
class TrainProgress:
    """Where a training run stands after an epoch: all that resuming it from there needs
    (with the network, the optimiser and the shuffling generator)."""

    epoch: int = 0
    best: float = math.inf
    best_epoch: int = 0
    waited: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class EpochEnd:
    """What the per-epoch hook of :func:`train_epochs` sees; ``last`` says training stops here."""

    record: dict[str, Any]
    progress: TrainProgress
    net: nn.Module
    opt: torch.optim.Optimizer
    last: bool


EpochHook = Callable[[EpochEnd], None]


def make_optimizer(net: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The optimiser every torch family trains with."""
    return torch.optim.Adam(net.parameters(), lr=lr)


def weights_of(net: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the network's parameters and buffers (of the wrapped module under DDP)."""
    module = getattr(net, "module", net)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_epochs(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[np.ndarray, np.ndarray],
    *,
    batch_size: int,
    max_epochs: int,
    patience: int,
    rng: np.random.Generator,
    device: torch.device,
    progress: TrainProgress | None = None,
    on_epoch_end: EpochHook | None = None,
) -> TrainProgress:
    """The one epoch loop: train ``net`` to map inputs to targets (MSE), in-process and on Ray Train.

    Each epoch visits the ``train`` rows in an order drawn from ``rng``, then
    measures the validation loss on ``val`` (chronologically after the
    training rows, never shuffled into them). The best epoch's weights are kept
    in the progress (an improvement must beat the best by
    :data:`MIN_REL_IMPROVEMENT`); training stops after ``patience`` epochs
    without one or at ``max_epochs``. ``progress`` resumes a run after its
    epoch; ``on_epoch_end`` is called after every epoch (to report, log or
    checkpoint). Restoring the best weights is the caller's choice.
    """
    p = progress if progress is not None else TrainProgress()
    x_train, y_train = train
    n_train = len(x_train)
    loss_fn = nn.MSELoss()
    for epoch in range(p.epoch + 1, max_epochs + 1):
        net.train()
        order = torch.from_numpy(rng.permutation(n_train))
        total = 0.0
        for start in range(0, n_train, batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x_train[idx]), y_train[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
            opt.step()
            total += float(loss.detach()) * len(idx)
        net.eval()
        record = {"epoch": epoch, "train_loss": total / max(1, n_train), "val_loss": _mse(net, *val, device)}
        p.epoch = epoch
        p.history.append(record)
        if record["val_loss"] < p.best * (1.0 - MIN_REL_IMPROVEMENT):
            p.best, p.best_epoch, p.waited = record["val_loss"], epoch, 0
            p.best_state = weights_of(net)
        else:
            p.waited += 1
        last = p.waited >= patience or epoch == max_epochs
        if on_epoch_end is not None:
            on_epoch_end(EpochEnd(dict(record), p, net, opt, last))
        if last:
            break
    return p


def _mse(net: nn.Module, inputs: np.ndarray, targets: np.ndarray, device: torch.device) -> float:
    total, start = 0.0, 0
    for out in predict(net, inputs, device):
        stop = start + len(out)
        total += float(np.sum((out - targets[start:stop]) ** 2))
        start = stop
    return total / max(1, targets.size)


# -- state dict <-> arrays ------------------------------------------------------------------
def state_dict_to_arrays(state_dict: dict[str, torch.Tensor], prefix: str = "net.") -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().cpu().numpy().copy() for k, v in state_dict.items()}


def arrays_to_state_dict(arrays: dict[str, np.ndarray], prefix: str = "net.") -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith(prefix)}


def positive(high: float) -> Constraint:
    """A constraint: a number in (0, high]."""
    within = interval(0.0, high)

    def check(v: Any) -> bool:
        return within(v) and v > 0

    check.__doc__ = f"a number in (0, {high}]"
    return check


#: constraints shared by every torch family
TORCH_CONSTRAINTS: dict[str, Constraint] = {
    "window": interval(2, 4096, integer=True),
    "hidden": interval(1, 1024, integer=True),
    "layers": interval(1, 8, integer=True),
    "lr": positive(1.0),
    "batch_size": interval(1, 65536, integer=True),
    "max_epochs": interval(1, 100_000, integer=True),
    "patience": interval(1, 100_000, integer=True),
    "val_fraction": interval(0.05, 0.5),
    "seed": interval(0, 2**32 - 1, integer=True),
    "device": one_of(*DEVICES),
}


class TorchDetector(Detector):
    """A detector whose score is a network's per-window error over its validation RMS.

    Learned state: ``net_`` (the module, in eval mode on ``device_``),
    ``norm_`` (:class:`Normaliser`), ``score_scale_`` (validation RMS error in
    normalised units), ``history_`` (one dict per epoch) and ``best_epoch_``.
    Set ``on_epoch`` (not a parameter) to a callable to follow training.

    The same ``seed`` gives bit-identical weights and scores on the same torch
    build, device and thread count; other thread counts differ in the last
    float32 digits.
    """

    #: called with each epoch's history record during ``fit``; not a parameter
    on_epoch: EpochCallback | None = None
    _normalisation: ClassVar[str] = "robust"

    # -- hooks for subclasses ------------------------------------------------------------
    def _build_net(self) -> nn.Module:
        raise NotImplementedError

    def _pairs(self, xn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, targets) of a normalised series; row k belongs to position ``min_history - 1 + k``."""
        raise NotImplementedError

    def _window_errors(self, outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Non-negative error per row, in normalised units."""
        raise NotImplementedError

    # -- fit and score --------------------------------------------------------------------
    def _fit(self, x: np.ndarray) -> None:
        self.device_ = resolve_device(self.device)
        self.norm_ = Normaliser.fit(x, self._normalisation)
        inputs, targets = self._pairs(self.norm_.transform(x))
        n_val = validation_size(len(inputs), float(self.val_fraction))
        self.history_: list[dict[str, Any]] = []
        backend = _BACKEND.get()
        if backend is not None:
            outcome = backend(TrainJob(self.to_dict(), inputs, targets, n_val), self.on_epoch)
            net = self._build_net()
            try:
                net.load_state_dict(arrays_to_state_dict(outcome.weights, "net."), strict=True)
            except RuntimeError as exc:
                raise ArtifactError(f"{self.family}: trained weights do not match the parameters: {exc}") from None
            self.net_ = net.to(self.device_).eval()
            self.history_, self.best_epoch_ = list(outcome.history), int(outcome.best_epoch)
            self.train_info_ = dict(outcome.info)
        else:
            self._fit_local(inputs, targets, n_val)
        errors = self._errors(inputs[-n_val:], targets[-n_val:])
        self.score_scale_ = max(float(np.sqrt(np.mean(errors**2))), SCALE_FLOOR)

    def _fit_local(self, inputs: np.ndarray, targets: np.ndarray, n_val: int) -> None:
        """Train in this process with :func:`train_epochs`, then keep the best epoch's weights."""
        n_train = len(inputs) - n_val
        on_epoch = self.on_epoch
        with seeded(int(self.seed), self.device_) as rng:
            net = self._build_net().to(self.device_)
            p = train_epochs(
                net,
                make_optimizer(net, float(self.lr)),
                (to_tensor(inputs[:n_train], self.device_), to_tensor(targets[:n_train], self.device_)),
                (inputs[n_train:], targets[n_train:]),
                batch_size=int(self.batch_size),
                max_epochs=int(self.max_epochs),
                patience=int(self.patience),
                rng=rng,
                device=self.device_,
                on_epoch_end=(lambda end: on_epoch(end.record)) if on_epoch is not None else None,
            )
        self.history_ = p.history
        if p.best_state is None:
            val_loss = p.history[-1]["val_loss"]
            raise InvalidParameterError(f"training diverged (validation loss {val_loss}); lower lr (got {float(self.lr)})")
        net.load_state_dict(p.best_state)
        self.net_ = net.eval()
        self.best_epoch_ = p.best_epoch

    def _errors(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        out = np.empty(len(inputs))
        start = 0
        for chunk in predict(self.net_, inputs, self.device_):
            stop = start + len(chunk)
            out[start:stop] = self._window_errors(chunk, targets[start:stop])
            start = stop
        return out

    @property
    def validation_error(self) -> float | None:
        """The validation RMS error in normalised units (``score_scale_``), None until fitted."""
        return float(self.score_scale_) if self.is_fitted else None

    def _score(self, x: np.ndarray) -> np.ndarray:
        inputs, targets = self._pairs(self.norm_.transform(x))
        if len(inputs) == 1:  # one window: the real-time path
            return self._window_errors(self._forward_one(inputs), targets) / self.score_scale_
        return self._errors(inputs, targets) / self.score_scale_

    def score_many(self, windows: list[np.ndarray], n_new: list[int]) -> list[np.ndarray]:
        """One forward pass (in chunks of :data:`SCORE_CHUNK` rows) over the scored rows of every
        window stacked; the numbers of :meth:`score` up to float32 rounding of the batched kernels."""
        if not self.is_fitted:
            raise NotFittedError(f"{self.family}: call fit() before score()")
        h = self.min_history
        out = [np.full(n, np.nan) for n in n_new]
        inputs, targets, where = [], [], []  # where: (series, first scored position in out, rows)
        for i, (w, n) in enumerate(zip(windows, n_new)):
            x = as_series(w)
            ready = min(n, len(x) - h + 1)  # the last n points that have min_history points behind them
            if ready <= 0:
                continue
            xn = self.norm_.transform(x[len(x) - (ready + h - 1) :])
            a, b = self._pairs(xn)
            inputs.append(a)
            targets.append(b)
            where.append((i, n - ready, ready))
        if not inputs:
            return out
        errors = self._errors(np.concatenate(inputs), np.concatenate(targets)) / self.score_scale_
        start = 0
        for i, first, rows in where:
            out[i][first:] = errors[start : start + rows]
            start += rows
        return out

    def _forward_one(self, inputs: np.ndarray) -> np.ndarray:
        """Network output for a single input row, as :func:`predict` gives it (within
        :data:`ONE_WINDOW_TOLERANCE`), through :func:`one_window_runner`: ONNX Runtime on CPU (a
        one-point stream step pays a few tens of microseconds for it instead of torch's per-operator
        dispatch), ``torch.jit.trace`` elsewhere. The runner is built by :meth:`warm` or on first use."""
        runner = self.__dict__.get("_one")
        if runner is None or runner[0] is not self.net_:
            runner = self._runner()
        return runner[1](np.ascontiguousarray(inputs, dtype=np.float32))

    def _runner(self) -> tuple[nn.Module, Callable[[np.ndarray], np.ndarray]]:
        example = self._pairs(np.random.default_rng(0).standard_normal(self.min_history))[0][:1]
        runner = (self.net_, one_window_runner(self.net_, example.astype(np.float32), self.device_))
        self._one = runner
        return runner

    def warm(self) -> None:
        if self.is_fitted:
            self._runner()

    # -- persistence ------------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        state = state_dict_to_arrays(self.net_.state_dict(), "net.")
        state.update(self.norm_.state())
        state["score_scale"] = np.asarray(self.score_scale_)
        state["best_epoch"] = np.asarray(self.best_epoch_)
        for key in ("epoch", "train_loss", "val_loss"):
            state[f"history.{key}"] = np.asarray([h[key] for h in self.history_], dtype=np.float64)
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        device = resolve_device(self.device)
        try:
            norm = Normaliser.from_state(state)
            scale = float(state["score_scale"])
            best_epoch = int(state.get("best_epoch", 0))
            epochs = state.get("history.epoch", np.empty(0))
            train = state.get("history.train_loss", np.empty(0))
            val = state.get("history.val_loss", np.empty(0))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{self.family}: incomplete model state ({type(exc).__name__}: {exc})") from None
        net = self._build_net()
        try:
            net.load_state_dict(arrays_to_state_dict(state, "net."), strict=True)
        except RuntimeError as exc:
            raise ArtifactError(f"{self.family}: weights do not match the parameters: {exc}") from None
        self.device_ = device
        self.net_ = net.to(device).eval()
        self.norm_ = norm
        self.score_scale_ = scale
        self.best_epoch_ = best_epoch
        self.history_ = [
            {"epoch": int(e), "train_loss": float(t), "val_loss": float(v)} for e, t, v in zip(epochs, train, val)
        ]

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> "TorchDetector":
        """Rebuild a detector saved with :meth:`save` (``config.json`` + ``state.npz``).

        ``device`` overrides the saved device, e.g. to serve a GPU-trained model on CPU.
        """
        d = Path(path)
        f = d / "config.json"
        try:
            config = json.loads(f.read_text())
            family, params = config["family"], dict(config["params"])
        except FileNotFoundError:
            raise ArtifactError(f"{f}: missing model config") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{f}: unreadable model config ({type(exc).__name__}: {exc})") from None
        target = cls if cls.family == family else detectors.get_class(family)  # the entry points
        if not issubclass(target, cls):
            raise ArtifactError(f"{f}: holds a {family!r} model, not a {cls.family or 'torch'!r} one")
        if device is not None:
            params["device"] = device
        try:
            det = target(**params)
        except TypeError as exc:
            raise ArtifactError(f"{f}: parameters do not fit {target.__name__} ({exc})") from None
        det._validate_params()
        return det.restore(cls._load_state(d))

    def save_torch(self, path: str | Path) -> Path:
        """Write the learned state as a ``torch.save`` file of tensors only."""
        if not self.is_fitted:
            raise NotFittedError(f"{self.family}: cannot save an unfitted detector")
        p = Path(path)
        torch.save({k: torch.from_numpy(np.array(v)) for k, v in self._state().items()}, p)
        return p

    def load_torch(self, path: str | Path) -> "TorchDetector":
        """Load state written by :meth:`save_torch` into this detector (``weights_only=True``). Returns self."""
        self._validate_params()
        p = Path(path)
        try:
            raw = torch.load(p, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ArtifactError(f"{p}: missing model state") from None
        except Exception as exc:  # noqa: BLE001 - unpickling refusals and format errors of all kinds
            raise ArtifactError(f"{p}: not a safe tensor file ({type(exc).__name__}: {exc})") from None
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise ArtifactError(f"{p}: expected a dict of tensors")
        return self.restore({str(k): v.numpy() for k, v in raw.items()})

    def __getstate__(self) -> dict[str, Any]:
        # callbacks (often closures over a progress bar) do not travel between processes
        state = dict(self.__dict__)
        state.pop("on_epoch", None)
        state.pop("_one", None)  # rebuilt on first use
        return state


#: how far (absolute, in the network's normalised outputs) a compiled one-window runner may differ
#: from torch's own network on a check input; float32 kernels summing in another order differ by ~1e-7
ONE_WINDOW_TOLERANCE = 1e-5


def one_window_runner(net: nn.Module, example: np.ndarray, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """A function of one float32 input row (shaped like ``example``) giving ``net``'s output as float64:
    on CPU an ONNX Runtime session of the exported network (one thread, as a serving replica runs),
    kept only if its output on ``example`` is within :data:`ONE_WINDOW_TOLERANCE` of torch's; else
    (another device, an export or a check that fails) ``torch.jit.trace`` of ``net``, else ``net``."""
    net.eval()
    if device.type == "cpu":
        try:
            run_onnx = _onnx_runner(net, example)
            with torch.inference_mode():
                want = net(torch.from_numpy(example)).numpy()
            if float(np.max(np.abs(run_onnx(example) - want))) <= ONE_WINDOW_TOLERANCE:
                return run_onnx
        except Exception:  # noqa: BLE001 - the runtime is an optimisation only: torch answers the same
            pass
    traced = _trace(net, torch.from_numpy(example).to(device))

    def run_torch(a: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            t = torch.from_numpy(a)
            return traced(t if device.type == "cpu" else t.to(device)).cpu().numpy().astype(np.float64)

    return run_torch


def _onnx_runner(net: nn.Module, example: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    import io

    import onnxruntime as ort

    buf = io.BytesIO()
    # with gradients on: without them torch's transformer layers take a fused path ONNX cannot express
    with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on batch sizes: one row is all it gets
        torch.onnx.export(net, (torch.from_numpy(example),), buf, dynamo=False, input_names=["x"], output_names=["y"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    run = session.run

    def run_onnx(a: np.ndarray) -> np.ndarray:
        return run(None, {"x": a})[0].astype(np.float64)

    return run_onnx


def _trace(net: nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.jit.trace`` of ``net`` for inputs shaped like ``example``; ``net`` itself if it cannot be traced."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.trace(net, example, check_trace=False)
    except Exception:  # noqa: BLE001 - tracing is an optimisation only
        return net


__all__ = [
    "DEVICES",
    "EpochEnd",
    "EpochHook",
    "Normaliser",
    "SCORE_CHUNK",
    "TORCH_CONSTRAINTS",
    "TorchDetector",
    "TrainBackend",
    "TrainJob",
    "TrainOutcome",
    "TrainProgress",
    "arrays_to_state_dict",
    "make_optimizer",
    "one_window_runner",
    "predict",
    "resolve_device",
    "seeded",
    "state_dict_to_arrays",
    "train_epochs",
    "training_backend",
    "validation_size",
    "weights_of",
    "windows",
]
