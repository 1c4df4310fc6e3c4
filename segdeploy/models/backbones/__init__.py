"""Backbones shared by the model families, with torchvision's parameter names.

Import the module you need (``segdeploy.models.backbones.vgg`` or
``segdeploy.models.backbones.resnet``): this package imports neither, so each
family loads only its own backbone.
"""
