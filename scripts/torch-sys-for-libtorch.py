#!/usr/bin/env python3
"""Makes a copy of torch-sys (the version in Cargo.lock) whose C++ wrapper compiles against
another libtorch: every generated wrapper function that calls an operator the libtorch lacks
(or calls it with other arguments) is given a body that throws, so that calling it from Rust
returns a TchError instead of the build failing. Nothing of ours calls such operators (they are
new private ones: _philox_*, _upsample_lanczos2d_aa, ...); the list of stubbed functions is
printed and written beside the copy (STUBBED.txt).

    torch-sys-for-libtorch.py REGISTRY_TORCH_SYS_DIR OUT_DIR INCLUDE_DIR... 

Used by scripts/build-for-device.sh (docs/gpu.md); facts about which operators differ come
from compiling, not from a list kept by hand.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

source, out, includes = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
if not (out / "Cargo.toml").exists():
    shutil.copytree(source, out)
wrappers = ["libtch/torch_api_generated.cpp", "libtch/torch_api.cpp"]
done = out / "STUBBED.txt"
stubbed = done.read_text().split() if done.exists() else []
for round_ in range(6):
    errors = {}
    for wrapper in wrappers:
        command = ["c++", "-fsyntax-only", "-std=c++17", "-w", "-D_GLIBCXX_USE_CXX11_ABI=1", "-DGLOG_USE_GLOG_EXPORT"]
        command += [f"-I{d}" for d in includes] + [wrapper]
        result = subprocess.run(command, cwd=out, capture_output=True, text=True)
        for line in result.stderr.splitlines():
            match = re.match(rf"{re.escape(wrapper)}:(\d+):\d+: error:", line)
            if match:
                errors.setdefault(wrapper, set()).add(int(match.group(1)))
    if not errors:
        break
    for wrapper, lines in errors.items():
        path = out / wrapper
        text = path.read_text().split("\n")
        functions = set()
        for number in lines:
            i = number - 1
            while i >= 0 and not re.match(r"^\S.*\b(atg_\w+|at\w+)\(", text[i]):
                i -= 1
            if i < 0:
                sys.exit(f"{wrapper}:{number}: an error outside any wrapper function; cannot stub it")
            functions.add(i)
        for start in sorted(functions, reverse=True):
            name = re.search(r"\b(at\w+)\(", text[start]).group(1)
            end = start
            while text[end] != "}":
                end += 1
            body = [text[start], "  PROTECT(", f'    throw std::runtime_error("{name}: not in the libtorch this build uses");', "  )", "}"]
            text[start : end + 1] = body
            stubbed.append(name)
        path.write_text("\n".join(text))
else:
    sys.exit("the wrapper still does not compile after stubbing: see the compiler's errors")
done.write_text("".join(f"{name}\n" for name in stubbed))
print(f"torch-sys copy in {out}: {len(stubbed)} wrapper functions stubbed: {' '.join(stubbed) or 'none'}")
