#!/usr/bin/env python
"""Export a checkpoint or weight file (any task model, or the joint model with task=multitask) as ONNX (run by ONNX
Runtime), as LiteRT (TensorFlow Lite, format=tflite) or as a torch.export program (.pt2, the entry to ExecuTorch),
optionally checked against the PyTorch model on real images (configs/export.yaml).

    python tools/export.py task=classification weights=mobilenet_v2_1.0_224_quant.tflite format=onnx out=mnv2.onnx
    python tools/export.py task=detection ckpt_path=runs/detection/.../checkpoints/best.ckpt format=pt2 out=ssdlite.pt2
    python tools/export.py task=detection weights=ssdlite_mobilenet_v2_coco_0.5_200x200.tflite format=onnx \
        out=ssdlite.onnx check_images=../shared/data/coco128/val2017
    python tools/export.py task=classification weights=mobilenet_v2_1.0_224_quant.tflite format=onnx out=mnv2.onnx \
        int8=true calibration_images=../shared/data/coco128/train2017 check_images=../shared/data/coco128/val2017
    python tools/export.py task=segmentation weights=deeplabv3_mnv2_pascal_quant.tflite format=tflite out=deeplab.tflite \
        int8=true calibration_images=../shared/data/coco128/train2017 check_images=../shared/data/coco128/val2017

Inputs are float images (N, 3, H, W) in [0, 1] at the export size (dynamic N); the model normalises them inside.
Detection exports return fixed-size padded boxes, scores, labels and num_detections (vision_tasks.export). With
check_images= the export runs in its runtime beside the PyTorch model and the parity report is printed and written
beside the export (<out>.parity.json). int8=true also writes <out stem>.int8.onnx (ONNX Runtime's static QDQ
post-training quantization) or <out stem>.int8.tflite (ai-edge-quantizer's static int8), calibrated on
calibration_images=, and checks it too (<stem>.int8.*.parity.json: argmax / detection agreement with the PyTorch
model). A LiteRT file has batch 1 and a detector's file stops before NMS (vision_tasks.export.export_litert).
tools/eval_export.py scores an exported detector's mAP on a COCO folder. Nothing is overwritten.
"""

import hydra


@hydra.main(version_base="1.3", config_path="../configs", config_name="export")
def main(cfg) -> None:
    from vision_tasks.export import export

    export(cfg)


if __name__ == "__main__":
    main()
