"""Deploy targets (``e2rnas.deploy_targets``): device profiles, runners that time artifacts, SSH devices, budgets.

Import the submodules directly; nothing heavy is imported here (onnxruntime, tensorrt and torch load on use).
"""

from e2rnas.deploy_targets.profiles import TARGETS, Target, get_target, load_target_file

__all__ = ["TARGETS", "Target", "get_target", "load_target_file"]
