"""protomem.GroupedBatchSampler: the library's IterateAndSample sampler (protomem/data/sampler.hpp) as a
batch sampler for torch.utils.data.DataLoader."""
import torch

from . import _C
from ._C import Error
from ._head import UnsupportedError

__all__ = ["GroupedBatchSampler"]


def _labels_tensor(labels):
    if isinstance(labels, torch.Tensor):
        t = labels.detach()
    else:
        try:
            t = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError) as e:
            raise Error(f"protomem: GroupedBatchSampler: labels must be a sequence of integers: {e}") from None
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dim() != 1:
        raise Error(f"protomem: GroupedBatchSampler: labels must be rank 1 (one label per sample); "
                    f"got shape {list(t.shape)}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise Error(f"protomem: GroupedBatchSampler: labels must be integers; got {t.dtype}")
    return t.to(torch.int64).contiguous()


class GroupedBatchSampler:
    """Class-grouped batches for Prototype Memory: each batch holds ``classes_per_batch`` classes
    x ``exemplars_per_class`` samples, every class once per epoch in a freshly shuffled order
    (the library's ``IterateAndSample``; docs/mining.md). Use it as
    ``DataLoader(dataset, batch_sampler=sampler)``; it yields lists of sample indices.

    Args:
        labels: the label of every sample of the data set (sample i has labels[i]), a sequence,
            numpy array or tensor of non-negative integers.
        classes_per_batch: C, classes in each (per-process) batch.
        exemplars_per_class: K >= 1 samples per class (K >= 2 for the exemplar-mean prototypes to
            carry gradient; a class with fewer samples repeats some).
        seed: batch n is a pure function of (seed, n, labels[, the mining table]).
        rank, world_size: with world_size W > 1 every process draws the same global batch of
            W x C classes and takes its own C of them (classes [rank C, (rank + 1) C)).
        doppelganger_fraction: f in [0, 1): round(f C) classes of each batch are look-alikes of
            the others, taken from ``head``'s doppelganger table (hardest first; random classes
            where the table holds too few or no head is set).
        head: a protomem.PrototypeMemory built with ``mining=protomem.DoppelgangerMining(k, n)``;
            may be set later (``sampler.head = head``).

    Resumable: ``state_dict()`` / ``load_state_dict()`` carry the seed and the number of batches
    drawn, checked against C, K, f and the data set on load. An iteration runs to the end of the
    current epoch (``len()`` is the number of batches in an epoch); ``set_epoch(e)`` moves to the
    start of epoch e unless the sampler is already inside it (so a resumed epoch continues).
    """

    def __init__(self, labels, classes_per_batch, exemplars_per_class, seed=0, *, rank=0,
                 world_size=1, doppelganger_fraction=0.0, head=None):
        self._init(None, labels, classes_per_batch, exemplars_per_class, seed, rank, world_size,
                   doppelganger_fraction, head)

    @classmethod
    def from_list_file(cls, path, classes_per_batch, exemplars_per_class, seed=0, *, rank=0,
                       world_size=1, doppelganger_fraction=0.0, head=None):
        """A sampler over a list file of ``<path> <label>`` lines (sample i: the i-th sample line)."""
        self = cls.__new__(cls)
        self._init(str(path), None, classes_per_batch, exemplars_per_class, seed, rank, world_size,
                   doppelganger_fraction, head)
        return self

    def _init(self, list_file, labels, C, K, seed, rank, world_size, fraction, head):
        world_size, rank, C = int(world_size), int(rank), int(C)
        if world_size < 1 or not 0 <= rank < world_size:
            raise Error(f"protomem: GroupedBatchSampler: rank = {rank} and world_size = {world_size} "
                        "need 0 <= rank < world_size")
        if C < 1:
            raise Error(f"protomem: GroupedBatchSampler: classes_per_batch = {C} must be >= 1")
        if world_size > 1 and fraction > 0:
            raise UnsupportedError(
                "protomem: GroupedBatchSampler: doppelganger_fraction > 0 with world_size > 1 needs "
                "the sharded memory's table, which does not exist yet (docs/python.md)")
        self.rank, self.world_size = rank, world_size
        self.classes_per_batch = C
        self.exemplars_per_class = int(K)
        self.head = head
        self._fraction = float(fraction)
        self._list_file = list_file
        self._labels = None if list_file is not None else _labels_tensor(labels)
        self._sampler = self._make(C * world_size, int(seed))
        self.last_batch = None

    def _make(self, global_classes, seed):
        """A C++ sampler over this data set with `global_classes` classes a (global) batch."""
        args = (int(global_classes), self.exemplars_per_class, int(seed), self._fraction)
        if self._list_file is not None:
            return _C._Sampler.from_list_file(self._list_file, *args)
        return _C._Sampler(self._labels, *args)

    # ---- the batches ----------------------------------------------------------------------

    def next_batch(self):
        """The next batch's sample indices (a list of C x K ints, K for each class in turn)."""
        head = None
        if self.head is not None and self._sampler.mined_per_batch > 0:
            head = getattr(self.head, "_head", self.head)
        samples, labels, classes, base, mined, number, epoch = self._sampler.next(head)
        if self.world_size > 1:
            per = self.classes_per_batch * self.exemplars_per_class
            samples = samples[self.rank * per:(self.rank + 1) * per]
            labels = labels[self.rank * per:(self.rank + 1) * per]
            classes = classes[self.rank * self.classes_per_batch:(self.rank + 1) * self.classes_per_batch]
        self.last_batch = {"number": number, "epoch": epoch, "classes": classes, "labels": labels,
                           "base_classes": base, "mined_classes": mined}
        return samples

    def __iter__(self):
        per_epoch = self._sampler.batches_per_epoch
        end = (self._sampler.position // per_epoch + 1) * per_epoch
        while self._sampler.position < end:
            yield self.next_batch()

    def __len__(self):
        return self._sampler.batches_per_epoch

    def set_epoch(self, epoch):
        """Moves to the first batch of `epoch`, unless the next batch already belongs to it."""
        per_epoch = self._sampler.batches_per_epoch
        if self._sampler.position // per_epoch != int(epoch):
            self._sampler.seek(int(epoch) * per_epoch)

    @property
    def position(self):
        """Batches drawn so far (the number of the next batch)."""
        return self._sampler.position

    def seek(self, position):
        """Makes batch `position` the next one."""
        self._sampler.seek(int(position))

    @property
    def epoch(self):
        return self._sampler.position // self._sampler.batches_per_epoch

    @property
    def num_classes(self):
        return self._sampler.num_classes

    @property
    def num_samples(self):
        return self._sampler.num_samples

    @property
    def mined_per_batch(self):
        """round(f C_global): classes of each global batch filled from the doppelganger table."""
        return self._sampler.mined_per_batch

    # ---- state ----------------------------------------------------------------------------

    def state_dict(self, position=None):
        """The sampler state (the library's format, as a uint8 tensor). `position` records another
        next-batch number than the batches drawn, e.g. the steps trained when a DataLoader with
        workers has drawn batches ahead."""
        global_classes = self.classes_per_batch * self.world_size
        if position is None:
            return {"sampler": self._sampler.state(), "global_classes_per_batch": global_classes}
        saved = self._sampler.position
        self._sampler.seek(int(position))
        try:
            return {"sampler": self._sampler.state(), "global_classes_per_batch": global_classes}
        finally:
            self._sampler.seek(saved)

    def load_state_dict(self, state):
        """Restores state_dict(); raises protomem.Error, sampler unchanged, when it is corrupt or
        was saved with another K, doppelganger fraction or data set.

        Saved with another number of classes per global batch (classes_per_batch x world_size:
        a run resumed on another number of processes): the run goes on from the same epoch and
        the same place in that epoch's class order (which depends on the seed and the epoch
        only), rounded down to a whole batch of the new size - no class of the epoch is skipped,
        at most one batch's worth is visited again."""
        if not isinstance(state, dict) or "sampler" not in state:
            raise Error("protomem: GroupedBatchSampler.load_state_dict expects the dict state_dict() "
                        "returns")
        source = "GroupedBatchSampler state"
        saved_classes = int(state.get("global_classes_per_batch", 0))
        current = self.classes_per_batch * self.world_size
        if saved_classes in (0, current):
            self._sampler.load_state(state["sampler"], source)
            return
        if saved_classes < 0:
            raise Error(f"protomem: {source}: global_classes_per_batch = {saved_classes} is negative")
        old = self._make(saved_classes, 0)
        old.load_state(state["sampler"], source)  # checks K, the fraction and the data set
        epoch, done = divmod(old.position, old.batches_per_epoch)
        classes_done = done * old.base_per_batch
        new = self._make(current, old.seed)
        new.seek(epoch * new.batches_per_epoch + classes_done // new.base_per_batch)
        self._sampler = new
