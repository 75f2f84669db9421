# The two commands of the README: `make demo` and `make test`.
.PHONY: demo test install

install:
	bash scripts/install.sh

demo: install
	.venv/bin/neurodeploy compile examples/digits_sfa.pt --arch examples/digits_sfa.py:build_model \
		--target sim -o out/demo --data examples/digits_test.npz --verify

test: install
	.venv/bin/python -m pytest -q tests
