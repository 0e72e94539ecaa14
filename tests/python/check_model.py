"""Opens a softmax model saved by `cohort train softmax --save-model` with numpy and the `safetensors` package,
and computes its accuracy on the Fashion-MNIST test split read straight from the IDX files.

Usage: python3 check_model.py MODEL.safetensors DATA_DIR EXPECTED_ACCURACY
Prints the accuracy and exits non-zero unless it equals EXPECTED_ACCURACY to the fourth digit.
"""

import gzip
import json
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def find(data_dir, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    sys.exit(f"{stem} not found in {data_dir}")


def main():
    model_path, data_dir, expected = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with safe_open(model_path, framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == "cohort-model" and meta["kind"] == "softmax", meta
    arch = json.loads(meta["architecture"])
    tensors = load_file(model_path)
    w, b = tensors["weight"], tensors["bias"]
    assert w.shape == (arch["classes"], arch["features"]) and w.dtype == np.float64, (w.shape, w.dtype)
    # cohort scales pixels by 1/255 in f64 and stores them as f32; the model computes in f64.
    images = read_idx(find(data_dir, "t10k-images-idx3-ubyte"))
    labels = read_idx(find(data_dir, "t10k-labels-idx1-ubyte"))
    x = (images.reshape(len(images), -1).astype(np.float64) / 255.0).astype(np.float32).astype(np.float64)
    predicted = np.argmax(x @ w.T + b, axis=1)
    accuracy = float(np.mean(predicted == labels))
    print(f"accuracy {accuracy:.6f} (cohort: {expected:.6f})")
    if abs(accuracy - expected) > 1e-4:
        sys.exit("the accuracy differs from cohort's beyond the fourth digit")


if __name__ == "__main__":
    main()
