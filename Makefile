# The two commands of the README. Each creates .venv and installs everything on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test install system-libs bench clean

demo: $(STAMP)
	$(BIN)/ditpolicy demo

test: $(STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/data_throughput.py

install: $(STAMP)

# EGL / OSMesa for MuJoCo's offscreen renderer; installed only when missing.
system-libs:
	@if ! ldconfig -p | grep -q 'libEGL.so.1' || ! ldconfig -p | grep -q 'libOSMesa' ; then \
		echo "installing EGL/OSMesa libraries (apt)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 >/dev/null; \
	fi

$(STAMP): pyproject.toml | system-libs
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[sim,dev,onnx,ros,remote,driving,libero,lerobot]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) outputs
