"""Shared by the subprocess tests of resume and torchrun, which are too slow to run for every method."""

# One method per kind of training state a checkpoint (or a rank) must carry: nothing beyond the optimiser
# (magnitude), gates and their monitor (ss-gl), Turbo-VBI's messages (turbo-vbi), a sparse subspace (ssvi).
# gaussian-snr, sparse-vd and ss-ghs train through the same machinery as one of these.
ONE_PER_KIND = ("magnitude", "ss-gl", "turbo-vbi", "ssvi")
