"""The trained model as a file and running it: shared by evaluation, export, register and serving.

    checkpoints.py  self-describing checkpoints: save, load, rebuild the model from the file alone
    predictor.py    TorchPredictor and OnnxPredictor: the one prediction path (no torch needed for ONNX)
    gradcam.py      Grad-CAM of the classification head
    volume.py       a whole volume, every axial slice: batched flip TTA, native grid, label map, uncertainty map
"""
