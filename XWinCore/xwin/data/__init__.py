"""Data: CT volumes through MONAI transforms, the DRR bank, view-pair batches (from the bank or rendered on the fly)
and real CXRs."""
from .bank import Bank, BankSpec, bank_spec, build_bank, load_bank
from .ct import find_cts, split_cts, training_cts
from .cxr import find_images, load_cxrs, to_model_input
from .online import OnlineDrrSampler
from .pairs import PairSampler

__all__ = ["Bank", "BankSpec", "OnlineDrrSampler", "PairSampler", "bank_spec", "build_bank", "find_cts", "find_images",
           "load_bank", "load_cxrs", "split_cts", "to_model_input", "training_cts"]
