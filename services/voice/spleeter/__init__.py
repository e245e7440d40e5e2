"""Spleeter 2stems as published (Deezer, Hennequin et al., JOSS 2020, MIT): the official
checkpoint read without TensorFlow, its two U-Nets rebuilt as one ONNX graph, and the
onnxruntime session that runs them."""
