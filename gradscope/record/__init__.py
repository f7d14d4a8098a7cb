"""Recording weight-gradient statistics of conv/linear layers (chosen by the activation they feed)."""
from gradscope.record.accumulate import Binner, WindowAccumulator, linear_edges, log_edges
from gradscope.record.discover import (ACTIVATIONS, FOLLOWED_OPS, LayerDiscovery, LayerInfo, conv_linear_layers,
                                       find_layers, select_layers)
from gradscope.record.recorder import (PRESETS, RELATIVE_EPS, GradientRecorder, RecorderWarning, inverse_scale,
                                       weight_and_mask)

__all__ = ["ACTIVATIONS", "Binner", "FOLLOWED_OPS", "GradientRecorder", "LayerDiscovery", "LayerInfo", "PRESETS",
           "RELATIVE_EPS", "RecorderWarning", "WindowAccumulator", "conv_linear_layers", "find_layers",
           "inverse_scale", "linear_edges", "log_edges", "select_layers", "weight_and_mask"]
