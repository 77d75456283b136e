"""ipywidgets dashboards, one module per lesson: the only package that imports ipywidgets.

Widgets only wire controls to functions of plots.py, estimate.py and train.py. They use the inline
backend with an Output widget (interactive_output), so they work on ipywidgets 7.7 (Colab) and 8.
"""
from frugal.widgets.economics import activation_meter, cost_calculator
from frugal.widgets.fp8 import fp8_recipe_explorer
from frugal.widgets.kernels import cross_entropy_memory_explorer, vector_add_explorer
from frugal.widgets.parallel import (data_parallel_trainer, layout_explorer, pipeline_explorer, sharding_explorer,
                                     sharding_live)
from frugal.widgets.precision import format_explorer, precision_dashboard
from frugal.widgets.recipe import recipe_dashboard
from frugal.widgets.recompute import checkpoint_slider, largest_batch_explorer

__all__ = [
    "cost_calculator", "activation_meter",                    # lesson 00
    "format_explorer", "precision_dashboard", "fp8_recipe_explorer",   # lesson 01
    "checkpoint_slider", "largest_batch_explorer",            # lesson 02
    "data_parallel_trainer",                                  # lesson 03
    "sharding_explorer", "sharding_live",                     # lesson 04
    "pipeline_explorer", "layout_explorer",                   # lesson 05
    "vector_add_explorer", "cross_entropy_memory_explorer",   # lesson 06
    "recipe_dashboard",                                       # lesson 07
]
