"""Data: CT volumes through MONAI transforms, the DRR bank, view-pair batches (from the bank or rendered on the fly)
and real CXRs."""
from .bank import Bank, BankSpec, build_bank, load_bank
from .ct import find_cts
from .cxr import find_images, load_cxrs, to_model_input
from .online import OnlineDrrSampler
from .pairs import PairSampler

__all__ = ["Bank", "BankSpec", "OnlineDrrSampler", "PairSampler", "build_bank", "find_cts", "find_images", "load_bank",
           "load_cxrs", "to_model_input"]
