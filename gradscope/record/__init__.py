"""Recording weight-gradient statistics of (ReLU-fed) conv/linear layers during training."""
from gradscope.record.accumulate import Binner, WindowAccumulator, linear_edges, log_edges
from gradscope.record.discover import LayerInfo, conv_linear_layers, find_layers, select_layers
from gradscope.record.recorder import GradientRecorder, inverse_scale, weight_and_mask

__all__ = ["Binner", "GradientRecorder", "LayerInfo", "WindowAccumulator", "conv_linear_layers",
           "find_layers", "inverse_scale", "linear_edges", "log_edges", "select_layers",
           "weight_and_mask"]
