"""The worker-process half of the pipeline: the worker loops, the tagger, prompt weighting, the SDXL stylizer and
the tiny test models. Torch, diffusers and onnxruntime are imported here and nowhere else; the chat process may
import only ``worker`` (to name the spawned child's entry point), whose imports stay torch-free.
"""
