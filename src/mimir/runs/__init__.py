"""What training and cross-validation write to disk, and how to read it back.

The folder layouts (`layout`), the training configuration (`config`) and the target
standardisation (`standardization`) of a run. Training writes them and inference, reports and
module building read them, so they sit below all of those; nothing here imports torch.
"""
