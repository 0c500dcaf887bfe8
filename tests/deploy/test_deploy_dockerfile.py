"""deploy/Dockerfile, checked without a container runtime: a multi-stage Debian 12 build whose
final stage has only runtime libraries (every one the built binaries load), runs as a non-root
user, and ships the entrypoint and preStop scripts, which are valid shell."""

import os
import re
import shlex
import subprocess

import pytest

from deploy_common import BACKSTOP_BIN, BACKSTOPCTL_BIN, DEPLOY, REPO

# What debian:12-slim has before any apt-get install.
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libzstd1", "liblz4-1",
                       "libbz2-1.0", "liblzma5", "libsystemd0", "libcap2", "libgcrypt20",
                       "libgpg-error0", "libselinux1", "libpcre2-8-0"}


# The image builds neither tests nor benchmarks.
TEST_ONLY_PACKAGES = {"libgtest-dev", "libgmock-dev", "libbenchmark-dev"}


def stages():
    """[(FROM line, [instructions])], with continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            result.append((line, []))
        elif result:
            result[-1][1].append(line)
    return result


def args():
    text = (DEPLOY / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))


def apt_packages(instructions):
    packages = set()
    for line in instructions:
        match = re.search(r"apt-get install ([^&]*)", line)
        if match:
            packages |= {w for w in shlex.split(match.group(1)) if not w.startswith("-")}
    return packages


def test_multi_stage_on_debian_12():
    found = stages()
    assert len(found) >= 2
    defaults = args()
    for line, _ in found:
        image = line.split()[1]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        assert re.match(r"debian:(12|bookworm)(-slim)?$", image), line


def test_final_stage_runs_as_a_non_root_user():
    _, final = stages()[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric uid lets Kubernetes check runAsNonRoot"
    assert any(f"--uid {user}" in line for line in final)


def test_final_stage_installs_runtime_libraries_only():
    _, final = stages()[-1]
    packages = apt_packages(final)
    assert packages
    assert not [p for p in packages if p.endswith("-dev") or p in
                ("build-essential", "cmake", "ninja-build", "g++", "gcc", "pkg-config")]
    assert any("COPY --from=build" in line for line in final)
    assert not any(re.match(r"COPY (?!--from)", line) for line in final), \
        "the final stage copies only the build stage's output"
    entrypoint = [line for line in final if line.startswith("ENTRYPOINT")]
    assert entrypoint == ['ENTRYPOINT ["/usr/local/bin/backstop-entrypoint"]']


def test_build_stage_installs_the_makefiles_build_packages():
    _, build = stages()[0]
    makefile = (REPO / "Makefile").read_text()
    listed = re.search(r"APT_PACKAGES := (.*?)\n\S", makefile, re.S).group(1)
    needed = {p for p in re.split(r"[\s\\]+", listed) if p.startswith("lib") and p.endswith("-dev")}
    needed -= TEST_ONLY_PACKAGES
    assert needed and needed <= apt_packages(build)
    assert not TEST_ONLY_PACKAGES & apt_packages(build)
    assert any("-DBACKSTOP_BUILD_TESTS=OFF" in line for line in build)


def shared_library_packages(binary):
    """Debian packages owning the shared libraries `binary` loads."""
    libraries = re.findall(r"=> (/\S+)", subprocess.run(["ldd", binary], capture_output=True,
                                                       text=True, check=True).stdout)
    owners = subprocess.run(["dpkg", "-S"] + [os.path.realpath(lib) for lib in libraries],
                            capture_output=True, text=True).stdout
    return {line.split(":")[0] for line in owners.splitlines()}


# GCC's ASan, UBSan and TSan runtimes (Debian 12).
SANITIZER_RUNTIME_PACKAGES = {"libasan8", "libubsan1", "libtsan2"}


def test_runtime_libraries_are_exactly_what_the_binaries_load():
    binaries = [b for b in (BACKSTOP_BIN, BACKSTOPCTL_BIN) if os.path.exists(b)]
    if not binaries:
        pytest.skip("binaries not built")
    loaded = set().union(*(shared_library_packages(b) for b in binaries))
    if loaded & SANITIZER_RUNTIME_PACKAGES:
        pytest.skip("a sanitizer build (make test-asan): the image ships the release build's "
                    "binaries, which load other libraries")
    _, final = stages()[-1]
    listed = apt_packages(final) - {"ca-certificates"}
    assert loaded - listed - BASE_IMAGE_PACKAGES == set(), "missing from the image"
    assert listed - loaded == set(), "installed but never loaded"


def test_build_stage_builds_and_installs_both_binaries_and_scripts():
    _, build = stages()[0]
    text = " ".join(build)
    for target in ("backstop", "backstopctl"):
        assert f"--target backstop backstopctl" in text
        assert f"/out/usr/local/bin/{target} " in text
    for script in ("docker-entrypoint.sh", "prestop.sh"):
        assert f"deploy/{script}" in text
        path = DEPLOY / script
        assert os.access(path, os.X_OK)
        subprocess.run(["sh", "-n", str(path)], check=True)
