"""protomem.PrototypeMemory: the C++ PrototypeHead (protomem/torch.hpp) as a torch.nn.Module."""
import math
import warnings
import os
import re

import torch

from . import _C
from ._C import Error

__all__ = ["PrototypeMemory", "PartialFCCompatible", "margin_from_insightface", "UnsupportedError"]

_DTYPES = {torch.float32: False, torch.float64: True}
# storage=: narrow prototypes for a float32 head (float32 arithmetic), by name or torch dtype.
_STORAGES = {None: "", "float32": "float32", "float64": "float64", "bfloat16": "bfloat16",
             "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "half": "float16",
             torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16",
             torch.float16: "float16"}
# The policy families in the order the C++ head keeps them (and checkpoints store them).
_FAMILIES = ("margin", "generator", "refresh", "queue", "mining", "aging")


class UnsupportedError(Error):
    """What the package does not do (yet): CUDA tensors, a process group of another backend than
    gloo, insightface options without a protomem equivalent. A protomem.Error."""


def default_aging():
    """The default aging policy, as C++'s default_aging(): AgeDecay(8) (docs/results.md,
    'Staleness')."""
    return _C.AgeDecay(8.0)


def _policy(value, default, family):
    """A policy object from an instance, a policy class (instantiated with its defaults) or None."""
    if value is None:
        return default()
    if isinstance(value, type):
        try:
            return value()
        except TypeError as e:
            raise Error(f"protomem: the {family} policy {value.__name__} needs arguments: {e}") from None
    return value


def _describe(t):
    return f"{t.dtype} tensor of shape {list(t.shape)} on {t.device}"


def sharding_group(process_group, per_process):
    """The torch.distributed group a memory is sharded over, or None for a memory of this process
    alone: the group passed, else the default group once torch.distributed is initialised; None
    when that group has one process (one process needs no communication) or with per_process."""
    if per_process:
        return None
    dist = torch.distributed
    if process_group is None:
        if not (dist.is_available() and dist.is_initialized()):
            return None
        process_group = dist.group.WORLD
        source = "the default process group"
    else:
        source = "the process group passed"
    if dist.get_world_size(process_group) <= 1:
        return None
    backend = str(dist.get_backend(process_group)).lower()
    if backend != "gloo":
        raise UnsupportedError(
            f"protomem: {source} uses the {backend} backend; the sharded memory exchanges CPU "
            "tensors and needs a gloo group (e.g. torch.distributed.new_group(backend='gloo') next "
            "to an NCCL group for the encoder) - docs/python.md, 'Distributed training'")
    return process_group


def shard_files(path):
    """The shard files ``f"{path}.rank{r}-of-{W}"`` that exist, ordered by W then r (every file of
    every world size found: the load names any set that is not exactly one save)."""
    directory, base = os.path.split(path)
    pattern = re.compile(re.escape(base) + r"\.rank(\d+)-of-(\d+)$")
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    found = []
    for name in names:
        m = pattern.match(name)
        if m:
            found.append((int(m.group(2)), int(m.group(1)), os.path.join(directory, name)))
    found.sort()
    if found:  # one save's world size: the files of rank 0 tell it, the others of W must exist
        W = found[0][0]
        return [f"{path}.rank{r}-of-{W}" for r in range(W)] + [f for w, _, f in found if w != W]
    return []


def check_distributed(process_group, per_process, what):
    """Raises UnsupportedError for a memory of one process used where several share its classes:
    built before torch.distributed was initialised with more than one process."""
    if per_process or process_group is not None:
        return
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise UnsupportedError(
            f"protomem: {what} was built before torch.distributed was initialised, and the default "
            f"group has {dist.get_world_size()} processes: build it after init_process_group() to "
            "shard it over them, or pass per_process=True for one independent memory per process")


class PrototypeMemory(torch.nn.Module):
    """Prototype Memory as a classifier head: ``loss = head(embeddings, labels)``.

    A fixed-size memory of class prototypes (the library's ``PrototypeMemory``, see README.md and
    docs/algorithm.md). Each training step generates a prototype for every class of the batch from
    the batch's own embeddings, scores every embedding against those and the stored prototypes of
    all other classes with a margin softmax, and returns the mean cross-entropy. ``loss.backward()``
    sends dL/dE to the encoder and commits the memory update (the fresh prototypes are written).

    Requires: embeddings ``B x dim`` CPU tensors of ``dtype`` (float32 or float64), labels ``B``
    int64 CPU, every label >= 0 (and < ``num_classes`` when given); the batch holds at most
    ``capacity`` classes, each with at least one exemplar (two for ``LeaveOneOut``); a
    class-grouped batch sampler (``protomem.GroupedBatchSampler``) gives K >= 2 exemplars a class.
    Guarantees: the loss and gradient are the C++ core's, bit for bit (no copy of the embeddings
    when each row is contiguous); the memory changes only when a training forward's backward runs:
    never under ``torch.no_grad()``, in ``eval()`` mode, or for embeddings that do not require
    grad, and a forward whose backward never ran is discarded by the next forward; every failure
    raises ``protomem.Error`` (a ``RuntimeError``) with the library's message and leaves the memory
    as it was.

    Args (each policy is a protomem policy object, or its class for its default parameters; every
    policy works with every dtype, storage and in the sharded memory):
        capacity: M, the number of prototype slots (independent of the number of identities).
        dim: D, the embedding dimension.
        margin: ``protomem.CosFace(s=64, m=0.35)`` (default), ``ArcFace(s=64, m=0.5,
            easy_margin=False, straight_through=False)``, ``CombinedMargin(s=64, m1=1, m2=0,
            m3=0)`` or ``NoMargin(s=64)``.
        generator: ``ExemplarMean()`` (default), ``DetachedExemplarMean()`` or ``LeaveOneOut()``.
        refresh: ``Replace()`` (default) or ``Momentum(a=0.5)``.
        queue: ``LeastRecentlyWritten()`` (default) or ``FirstInFirstOut()``.
        mining: ``NoMining()`` (default) or ``DoppelgangerMining(k, table_capacity)``: the
            look-alike table ``GroupedBatchSampler(head=...)`` fills batches from.
        aging: ``AgeDecay(half_life=8)`` (default, as C++'s default_aging()),
            ``AgeDecay(half_life, max_age)``, ``MaxAge(max_age=1024)`` or ``NoAging()``: how a
            stored prototype counts by its age in committed steps.
        dtype: ``torch.float32`` (default) or ``torch.float64``.
        storage: how prototypes are stored: the dtype (default, ``None``), or for a float32 head
            ``"bfloat16"`` / ``"float16"`` (or ``torch.bfloat16`` / ``torch.float16``): half the
            memory, float32 arithmetic.
        num_classes: labels must be < num_classes (0: undeclared).
        threads: threads of the step (0: OpenMP's default, which ``torch.set_num_threads`` sets).
        workspace_bytes: bound on the step's scratch memory (tiles of logits).
        similar_k: most-similar stored classes reported per batch class in ``last_step``.
        process_group: the ``torch.distributed`` group (gloo) the memory is sharded over; by
            default the default group once ``init_process_group()`` has run. With more than one
            process, each stores a share of the slots and passes only its own rows: the loss is
            that of the global batch (the same in every process), the gradient that of its rows,
            and the memory equals one process's memory stepped on the concatenated batches.
            Construction, forward, ``state_dict()``, ``load_state_dict()``, ``save``, ``load``
            and the views of the contents are then collectives: every process calls them.
        per_process: keep one independent memory in each process instead (not the sharded
            memory).
        gradient_scale: what the gradient returned to the encoder is multiplied by. ``"ddp"``
            (default): the number of processes the memory is sharded over (1 for a memory of one
            process), so that after DistributedDataParallel averages the encoder's gradients over
            the processes, the encoder gets the gradient of the global batch's mean loss - what
            insightface's PartialFC_V2 gives it (its all-gather multiplies by the world size in
            backward), and what one process training on the whole batch gets. A number: that
            factor (1.0: the exact gradient of the returned loss, for a trainer that sums
            gradients over the processes instead of averaging them). The loss itself is never
            scaled. Settable later: ``head.gradient_scale = ...``.
        single_exemplar: what a batch in which more than half of the classes have a single
            exemplar does (the global batch when sharded). Such a class's prototype is its own
            embedding, which it matches whatever the encoder does: the step teaches little and
            the loss is small and misleading - the mark of a sampler that is not class-grouped
            (a plain DistributedSampler). ``"error"`` (default): protomem.Error naming
            GroupedBatchSampler, nothing changes; ``"warn"``: the step runs, a warning once;
            ``"allow"``: the step runs.
        gemm: the memory pass's GEMM: ``"auto"`` (default: the faster of those the build has,
            measured once per process and shape class - two processes may then round
            differently), ``"eigen"`` or ``"blas"``: forced, for the same rounding in every
            process and every run (e.g. a resumed run that must equal a straight one).
    """

    def __init__(self, capacity, dim, margin=None, generator=None, refresh=None, queue=None,
                 mining=None, aging=None, *, dtype=torch.float32, storage=None, num_classes=0,
                 threads=0, workspace_bytes=64 << 20, similar_k=0, process_group=None,
                 per_process=False, gradient_scale="ddp", single_exemplar="error", gemm="auto"):
        super().__init__()
        if single_exemplar not in ("error", "warn", "allow"):
            raise Error(f"protomem: single_exemplar must be 'error', 'warn' or 'allow'; got "
                        f"{single_exemplar!r}")
        if dtype not in _DTYPES:
            raise Error(f"protomem: dtype must be torch.float32 or torch.float64; got {dtype}")
        try:
            storage_name = _STORAGES[storage]
        except (KeyError, TypeError):
            raise Error(f"protomem: storage must be None, 'float32', 'float64', 'bfloat16' or "
                        f"'float16' (or the torch dtype); got {storage!r}") from None
        group = sharding_group(process_group, per_process)
        self._process_group = group
        self._per_process = per_process
        self._dtype = dtype
        # Checked before the head is built: building a sharded head is a collective, and a value
        # refused in one process after it would leave the others waiting at the next forward.
        scale = self._scale_of(gradient_scale)
        arguments = (
            _DTYPES[dtype], storage_name, int(capacity), int(dim), int(num_classes),
            int(workspace_bytes), int(threads), int(similar_k), single_exemplar != "error",
            str(gemm),
            _policy(margin, _C.CosFace, "margin"), _policy(generator, _C.ExemplarMean, "generator"),
            _policy(refresh, _C.Replace, "refresh"),
            _policy(queue, _C.LeastRecentlyWritten, "queue"),
            _policy(mining, _C.NoMining, "mining"), _policy(aging, default_aging, "aging"))
        if group is None:
            self._head = _C.make_head(*arguments)
        else:
            self._head = _C.make_sharded_head(group, *arguments)
        self._single_exemplar = single_exemplar
        self._warned = set()  # the warnings this module gave (each at most once)
        self._head.gradient_scale = scale

    @property
    def gradient_scale(self):
        """What the gradient returned to the encoder is multiplied by (see the constructor)."""
        return self._head.gradient_scale

    @gradient_scale.setter
    def gradient_scale(self, value):
        self._head.gradient_scale = self._scale_of(value)

    def _scale_of(self, value):
        """The factor of a gradient_scale value: 'ddp' is the sharding group's size; a number
        must be finite and > 0."""
        if isinstance(value, str):
            if value != "ddp":
                raise Error(f"protomem: gradient_scale must be 'ddp' or a number > 0; got {value!r}")
            group = self._process_group
            return float(1 if group is None else torch.distributed.get_world_size(group))
        try:
            factor = float(value)
        except (TypeError, ValueError):
            raise Error(f"protomem: gradient_scale must be 'ddp' or a number > 0; got "
                        f"{value!r}") from None
        if not (math.isfinite(factor) and factor > 0):
            raise Error(f"protomem: GradientScale factor = {factor} must be finite and > 0")
        return factor

    @property
    def world_size(self):
        """The number of processes the memory is sharded over (1 for a memory of one process)."""
        group = self._process_group
        return 1 if group is None else torch.distributed.get_world_size(group)

    @property
    def sharded(self):
        """Whether the memory is sharded over the processes of a torch.distributed group."""
        return self._process_group is not None

    # ---- the step ---------------------------------------------------------------------------

    def forward(self, embeddings, labels):
        """The mean margin-softmax loss of the batch (a 0-dim tensor of the head's dtype).

        Sharded: a collective. Input that fails a check in one process fails the forward in
        every process with the same protomem.Error (naming that process), nothing changed, so a
        trainer that catches it and skips the batch keeps the processes in step."""
        try:
            self._check(embeddings, labels)
        except Error as error:
            if not self.sharded:
                raise
            self._head.fail_forward(str(error))  # raises the same Error in every process
        check_distributed(self._process_group, self._per_process, "PrototypeMemory")
        if not self.training:
            embeddings = embeddings.detach()  # evaluation: the loss only, never an update
        elif torch.is_grad_enabled() and not embeddings.requires_grad:
            self._warn_once("no_grad", "protomem: PrototypeMemory in training mode got embeddings "
                            "that do not require grad: the loss is computed but the memory is not "
                            "updated (it is updated by the backward of a training forward). Pass "
                            "the encoder's output, or call head.eval() for evaluation.")
        dropped = self._head.dropped_updates
        loss = self._head.forward(embeddings, labels)
        if self._head.dropped_updates != dropped:
            self._warn_once("dropped", "protomem: the memory update of the previous training "
                            "forward was dropped: its backward had not run when this forward came. "
                            "Two forwards before one backward keep only the last update; with "
                            "gradient accumulation, run backward after each forward.")
        if self._single_exemplar == "warn":
            step = self._head.last_step()
            singles, classes = step["single_exemplar_classes"], len(step["classes"])
            if 2 * singles > classes:
                self._warn_once("single_exemplar", f"protomem: {singles} of the batch's {classes} "
                                "classes have a single exemplar: such a class's prototype is its "
                                "own embedding, so the step teaches little and the loss misleads; "
                                "use protomem.GroupedBatchSampler (K >= 2 exemplars per class).")
        return loss

    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=4)  # the caller of head(...)

    def _check(self, embeddings, labels):
        name = "PrototypeMemory"
        for what, t in (("embeddings", embeddings), ("labels", labels)):
            if not isinstance(t, torch.Tensor):
                raise Error(f"protomem: {name}: {what} must be a torch.Tensor; got {type(t).__name__}")
            if t.device.type != "cpu":
                raise UnsupportedError(
                    f"protomem: {name}: {what} is a {_describe(t)}; {t.device.type} tensors are not yet "
                    "supported by the Python package (the C++ CUDA backend is not bound yet): pass "
                    "CPU tensors, e.g. head(embeddings.cpu(), labels.cpu())")
            if t.layout != torch.strided:
                raise Error(f"protomem: {name}: {what} must be a dense tensor; got layout {t.layout}")
        if embeddings.dtype != self._dtype:
            raise Error(f"protomem: {name}: embeddings must have dtype {self._dtype} (this head's); "
                        f"got a {_describe(embeddings)} (convert with .to({self._dtype}), e.g. the "
                        "output of an autocast region)")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise Error(f"protomem: {name}: embeddings must be B x {self.dim} (B x dim); got a "
                        f"{_describe(embeddings)}")
        if embeddings.shape[0] < 1 and not self.sharded:
            raise Error(f"protomem: {name}: embeddings hold an empty batch (B = 0)")
        if labels.dtype != torch.int64:
            raise Error(f"protomem: {name}: labels must have dtype torch.int64; got a {_describe(labels)} "
                        "(convert with .long())")
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise Error(f"protomem: {name}: labels must have shape [{embeddings.shape[0]}] (one per "
                        f"embedding row); got a {_describe(labels)}")

    # ---- state ------------------------------------------------------------------------------

    def get_extra_state(self):
        """The memory as the library's checkpoint bytes (a uint8 tensor): in state_dict(). In a
        sharded memory (a collective) only this process's shard (checkpoint format version 3): each
        process saves its own state_dict and loads it back at the same world size, as
        arcface_torch does with ``softmax_fc_gpu_{rank}.pt``. To change the world size use
        save(path) / load(path); for the whole memory as one checkpoint, full_state()."""
        return self._head.state()

    def set_extra_state(self, state):
        """Restores get_extra_state()'s bytes; raises protomem.Error, memory unchanged, when they
        are corrupt or of another dtype, dim, policy or a larger memory, or (sharded) a shard of
        another rank or world size. A sharded memory also takes a whole single-process checkpoint
        (full_state(), or a one-process state_dict), the same in every process."""
        if not isinstance(state, torch.Tensor):
            raise Error("protomem: PrototypeMemory state must be the uint8 tensor of checkpoint bytes "
                        f"that state_dict() stores; got {type(state).__name__}")
        self._head.load_state(state, "state_dict checkpoint")

    def full_state(self):
        """The whole memory as one single-process checkpoint (uint8 tensor; what C++
        PrototypeMemory::load reads). In a sharded memory a collective that gathers every prototype
        into every process: for exports and tests, not for routine checkpoints."""
        return self._head.full_state()

    def save(self, path, gather=False):
        """Writes the memory in the library's checkpoint format and returns the path written.

        One process: the checkpoint at `path` (what C++ PrototypeMemory::load reads). Sharded (a
        collective): each process writes only its shard, to ``f"{path}.rank{r}-of-{W}"`` (C++
        protomem::shard_path); load(path) reads the W files into any number of processes, or into
        one. With ``gather=True`` a sharded memory instead writes the whole memory as one
        single-process checkpoint at `path` (process 0 writes; every process holds the whole memory
        while it does)."""
        return self._head.save(str(path), bool(gather))

    def load(self, path):
        """Reads a checkpoint: the single-process file at `path` when there is one (save() of a
        one-process memory, save(gather=True), C++ PrototypeMemory::save), otherwise the shard
        files ``f"{path}.rank{r}-of-{W}"`` written by save() in W processes, whatever W is and
        whatever this memory's world size (one process included); each process streams the W
        files and keeps only its own records. A missing, corrupt or foreign shard raises the same
        protomem.Error in every process and changes nothing. Every process must see the same
        files."""
        path = str(path)
        # Neither a file nor shards: the single-file load names `path` (in every process alike).
        self._head.load(path, [] if os.path.isfile(path) else shard_files(path))
    # ---- what is stored ---------------------------------------------------------------------

    def labels(self):
        """The stored labels (int64 [n]), in eviction order, the next to be evicted first. A copy."""
        return self._head.contents()[0]

    def prototypes(self):
        """The stored prototypes (n x dim, the head's dtype), rows in the order of labels(). A copy."""
        return self._head.contents()[1]

    def last_written(self):
        """For each stored class (order of labels()), the step that last wrote it (int64 [n])."""
        return self._head.contents()[2]

    def ages(self):
        """Steps since each stored class (order of labels()) was last written (int64 [n])."""
        return self._head.stats()["steps"] - self.last_written()

    def contents(self):
        """(labels, prototypes, last_written) in one pass: consistent copies of the stored state."""
        return self._head.contents()

    def prototype(self, label):
        """The stored prototype of `label` (a copy); protomem.Error when it is not stored."""
        return self._head.prototype(int(label))

    def __contains__(self, label):
        return self._head.contains(int(label))

    def stats(self):
        """Counters since construction: steps, refreshes, insertions, evictions (committed steps)."""
        return self._head.stats()

    @property
    def last_step(self):
        """The last forward's result: loss, classes, similar / similar_cosines (C x k), threads,
        tile_columns, workspace_bytes, gemm (the memory pass's GEMM: "eigen", "blas" or "bf16",
        chosen by the library at run time) and gemm_calibration_ms (its measured candidates, 0 for
        those not measured)."""
        return self._head.last_step()

    def doppelgangers(self, label):
        """(labels, cosines) of `label`'s row in the doppelganger table (DoppelgangerMining)."""
        return self._head.doppelgangers(int(label))

    @property
    def size(self):
        """Classes stored now (<= capacity)."""
        return self._head.size

    @property
    def capacity(self):
        return self._head.capacity

    @property
    def dim(self):
        return self._head.dim

    @property
    def dtype(self):
        return self._dtype

    @property
    def pending(self):
        """Whether a training forward's update waits for its backward."""
        return self._head.pending

    @property
    def storage(self):
        """How the prototypes are stored: "float32", "float64", "bfloat16" or "float16"."""
        return self._head.storage

    def policies(self):
        """Policy names as checkpoints store them: margin, generator, refresh, queue, mining,
        aging."""
        return tuple(self._head.policy_names())

    def policy_objects(self):
        """The policies themselves (copies): a dict family -> policy object."""
        return dict(zip(_FAMILIES, self._head.policy_objects()))

    # The policies, one property per family (a copy: set it with set_<family>() or assignment).
    # Setting one goes through the C++ memory's checked setter: a bad value raises protomem.Error
    # and changes nothing; margin and generator take effect at the next forward, refresh, queue,
    # mining and aging at the next commit (aging also at the next forward); a new mining policy
    # starts an empty table. In the sharded memory every process sets the same policy.

    def set_margin(self, margin):
        """E.g. a margin schedule: head.set_margin(protomem.CosFace(64, m_at(step)))."""
        self._head.set_margin(_policy(margin, _C.CosFace, "margin"))

    def set_generator(self, generator):
        self._head.set_generator(_policy(generator, _C.ExemplarMean, "generator"))

    def set_refresh(self, refresh):
        self._head.set_refresh(_policy(refresh, _C.Replace, "refresh"))

    def set_queue(self, queue):
        self._head.set_queue(_policy(queue, _C.LeastRecentlyWritten, "queue"))

    def set_mining(self, mining):
        self._head.set_mining(_policy(mining, _C.NoMining, "mining"))

    def set_aging(self, aging):
        """E.g. a half-life that follows the learning rate: head.set_aging(AgeDecay(h))."""
        self._head.set_aging(_policy(aging, default_aging, "aging"))

    margin = property(lambda self: self._head.policy_objects()[0],
                      lambda self, p: self.set_margin(p), doc="The margin policy.")
    generator = property(lambda self: self._head.policy_objects()[1],
                         lambda self, p: self.set_generator(p), doc="The generator policy.")
    refresh = property(lambda self: self._head.policy_objects()[2],
                       lambda self, p: self.set_refresh(p), doc="The refresh policy.")
    queue = property(lambda self: self._head.policy_objects()[3],
                     lambda self, p: self.set_queue(p), doc="The queue policy.")
    mining = property(lambda self: self._head.policy_objects()[4],
                      lambda self, p: self.set_mining(p), doc="The mining policy.")
    aging = property(lambda self: self._head.policy_objects()[5],
                     lambda self, p: self.set_aging(p), doc="The aging policy.")

    def clear(self):
        """Empties the memory and resets its counters (the policies keep their parameters)."""
        self._head.clear()

    def extra_repr(self):
        names = ", ".join(self.policies())
        storage = "" if self.storage == str(self._dtype).replace("torch.", "") else \
            f", storage={self.storage}"
        return (f"capacity={self.capacity}, dim={self.dim}, dtype={self._dtype}{storage}, "
                f"policies=({names}), stored={self.size}")

    # ---- for tests and benchmarks -------------------------------------------------------------

    def _core_step(self, embeddings, labels, gradient=None):
        """The C++ core's own step (PrototypeMemory::step on the tensors' memory, no autograd):
        returns (loss, dL/dE, seconds the core's step took). Commits, like a trained step."""
        self._check(embeddings, labels)
        embeddings = embeddings.detach()
        if embeddings.stride(1) != 1:
            embeddings = embeddings.contiguous()
        labels = labels.contiguous()
        if gradient is None:
            gradient = torch.empty_like(embeddings, memory_format=torch.contiguous_format)
        loss, seconds = self._head.core_step(embeddings, labels, gradient)
        return loss, gradient, seconds

    def _clone(self):
        """A new module with the same configuration, policies and committed state."""
        twin = PrototypeMemory.__new__(PrototypeMemory)
        torch.nn.Module.__init__(twin)
        twin._process_group = self._process_group
        twin._per_process = self._per_process
        twin._dtype = self._dtype
        twin._single_exemplar = self._single_exemplar
        twin._warned = set()
        twin._head = self._head.clone()
        twin.train(self.training)
        return twin

    def __deepcopy__(self, memo):
        return self._clone()


_warned = set()  # the messages margin_from_insightface has warned with (each is given once)


def _warn_once(message):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, UserWarning, stacklevel=3)


def margin_from_insightface(margin_loss, straight_through=False):
    """A protomem margin computing what an insightface arcface_torch margin object computes:
    ``losses.CombinedMarginLoss(s, m1, m2, m3, interclass_filtering_threshold)`` (attributes s, m1,
    m2, m3), ``losses.ArcFace(s, margin)`` or ``losses.CosFace(s, m)``; a protomem margin is
    returned as is.

    arcface_torch's CombinedMarginLoss (recognition/arcface_torch/losses.py) has two branches:

    - ``m1 == 1 and m3 == 0``: the angle gets ``+ m2`` inside ``torch.no_grad()``: the target is
      cos(theta + m2) at every angle and autograd sees the plain cosine (the gradient with respect
      to the target cosine is s, as if psi' = 1). Mapped to ``NoMargin(s)`` for m2 = 0, else to
      ``ArcFace(s, m2, straight_through=straight_through)``: with ``straight_through=True`` the
      same function and gradient as arcface_torch; with the default ``False`` the exact gradient
      of psi (and insightface's classic fallback cos - m2 sin m2 where theta + m2 > pi, where
      arcface_torch's target rises again). arcface_torch never reads its ``easy_margin``
      attribute on this branch: one set to True is ignored, with a warning.
    - otherwise, ``m3 > 0``: CosFace, target cos - m3 through autograd, whatever m1 and m2 are
      (arcface_torch ignores them: a warning names the ignored ones). Mapped to ``CosFace(s, m3)``.
    - otherwise arcface_torch raises (a bare ``raise``); so does this, with protomem.Error.

    ``interclass_filtering_threshold > 0`` has no protomem equivalent: UnsupportedError. Each
    warning is given once per process (the same message is not repeated)."""
    if not isinstance(straight_through, bool):
        raise Error(f"protomem: straight_through must be True or False; got {straight_through!r}")
    if isinstance(margin_loss, (_C.NoMargin, _C.CosFace, _C.ArcFace, _C.CombinedMargin)):
        if straight_through and not (isinstance(margin_loss, _C.ArcFace) and
                                     margin_loss.straight_through):
            raise Error(f"protomem: straight_through=True applies to insightface margin objects; "
                        f"the protomem margin {margin_loss!r} is used as is (for arcface_torch's "
                        "gradient pass protomem.ArcFace(s, m, straight_through=True))")
        return margin_loss
    get = lambda name: getattr(margin_loss, name, None)  # noqa: E731
    threshold = get("interclass_filtering_threshold")
    if threshold is not None and threshold > 0:  # arcface_torch filters only for a threshold > 0
        raise UnsupportedError(f"protomem: interclass_filtering_threshold = {threshold} has no "
                               "protomem equivalent; use 0")
    s = get("s") if get("s") is not None else get("scale")
    if s is None:
        raise Error(f"protomem: cannot read a scale s from the margin {margin_loss!r}; pass a "
                    "protomem margin (protomem.CosFace(s, m), protomem.ArcFace(s, m), ...)")
    s = float(s)
    if get("m1") is not None:
        m1, m2, m3 = float(get("m1")), float(get("m2")), float(get("m3"))
        if m1 == 1.0 and m3 == 0.0:
            if get("easy_margin"):
                _warn_once("protomem: arcface_torch's CombinedMarginLoss ignores easy_margin = "
                           f"{get('easy_margin')!r} (its m1 = 1, m3 = 0 branch never reads it); "
                           "so does the margin returned")
            if m2 == 0.0:
                return _C.NoMargin(s)
            return _C.ArcFace(s, m2, False, straight_through)
        if m3 > 0.0:
            ignored = [f"{name} = {value}" for name, value, neutral in
                       (("m1", m1, 1.0), ("m2", m2, 0.0)) if value != neutral]
            if ignored:
                _warn_once(f"protomem: arcface_torch's CombinedMarginLoss with m3 = {m3} > 0 "
                           f"computes CosFace(s, m3) and ignores {' and '.join(ignored)}; so does "
                           "the margin returned, CosFace(s, m3) (for cos(m1 theta + m2) - m3 "
                           "pass protomem.CombinedMargin(s, m1, m2, m3))")
            return _C.CosFace(s, m3)
        raise Error(f"protomem: arcface_torch's CombinedMarginLoss raises for m1 = {m1}, "
                    f"m2 = {m2}, m3 = {m3}: it computes m1 = 1 with m3 = 0 (ArcFace) or m3 > 0 (CosFace) only "
                    "(for cos(m1 theta + m2) - m3 pass protomem.CombinedMargin(s, m1, m2, m3))")
    name = type(margin_loss).__name__.lower()
    if "arc" in name and get("margin") is not None:
        # losses.ArcFace(s, margin): the same no_grad rule as CombinedMarginLoss's ArcFace branch.
        return _C.ArcFace(s, float(get("margin")), False, straight_through)
    if "cos" in name and get("m") is not None:
        return _C.CosFace(s, float(get("m")))
    raise Error(f"protomem: cannot map the margin {margin_loss!r} (expected insightface's "
                "CombinedMarginLoss, ArcFace or CosFace, or a protomem margin)")


class PartialFCCompatible(PrototypeMemory):
    """PrototypeMemory with the constructor of insightface's ``PartialFC_V2``:
    ``PartialFCCompatible(margin_loss, embedding_size, num_classes, sample_rate, fp16)``, called as
    ``loss = module(local_embeddings, local_labels)``.

    Mapping: ``margin_loss`` -> the margin (margin_from_insightface); ``embedding_size`` -> dim;
    ``num_classes`` -> the label range; ``sample_rate`` -> capacity = int(sample_rate *
    num_classes), the number of class centres Partial FC scores per step (or pass capacity=...);
    ``fp16`` is accepted and ignored (the step runs in float32; half embeddings are converted).
    ``straight_through`` goes to margin_from_insightface: False (default) takes the exact
    gradient of ArcFace's target, True arcface_torch's (the margin added under no_grad).
    Keyword arguments go to PrototypeMemory. Unlike PartialFC_V2 it has no parameters: nothing
    to give the optimizer (an empty param group is fine), the memory travels in state_dict().
    """

    def __init__(self, margin_loss, embedding_size, num_classes, sample_rate=1.0, fp16=False,
                 capacity=None, straight_through=False, **kwargs):
        if not (0.0 < sample_rate <= 1.0):
            raise Error(f"protomem: sample_rate = {sample_rate} must be in (0, 1]")
        if capacity is None:
            capacity = max(1, int(sample_rate * num_classes))
        margin = margin_from_insightface(margin_loss, straight_through=straight_through)
        super().__init__(capacity, embedding_size, margin=margin, num_classes=num_classes,
                         **kwargs)
        self.sample_rate = sample_rate
        self.fp16 = fp16
        self.embedding_size = embedding_size
        self.num_classes = num_classes

    def forward(self, local_embeddings, local_labels):
        """As PartialFC_V2.forward: labels of any integer dtype, shape [B] or [B, 1]; float16 /
        bfloat16 embeddings are converted to the head's dtype (the gradient flows back)."""
        if isinstance(local_labels, torch.Tensor) and local_labels.dtype != torch.int64 and \
                not local_labels.dtype.is_floating_point:
            local_labels = local_labels.long()
        if isinstance(local_labels, torch.Tensor) and local_labels.dim() == 2 and \
                local_labels.shape[1] == 1:
            local_labels = local_labels.view(-1)
        if isinstance(local_embeddings, torch.Tensor) and \
                local_embeddings.dtype in (torch.float16, torch.bfloat16):
            local_embeddings = local_embeddings.to(self.dtype)
        return super().forward(local_embeddings, local_labels)
