# Sourced by the prepare scripts: sets PIP (an array) to a pip that can download from
# PyPI: the interpreter $1's (the repo's .venv) if it has one, else Debian's python3-pip,
# installed when missing. $2 names the caller in messages.
find_pip() {
  local py=$1 who=$2
  if "$py" -m pip --version >/dev/null 2>&1; then
    PIP=("$py" -m pip)
    return
  fi
  if ! dpkg-query -W -f='${Status}' python3-pip 2>/dev/null | grep -q "install ok installed"; then
    echo "$who: installing python3-pip"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends python3-pip
  fi
  PIP=(/usr/bin/python3 -m pip)
}
