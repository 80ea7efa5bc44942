# Sourced by scripts/test.sh and scripts/sanitize.sh (after `root` is set and the working
# directory is the checkout): the machine's set-up, and build directories configured.

# Installs and prepares what the tests need (scripts/setup.sh), removes leftovers of an
# interrupted earlier run (by prefix only), and removes this run's on exit.
prepare_test_machine() {
  bash scripts/setup.sh
  bash scripts/cleanup.sh >/dev/null
  trap 'bash "$root/scripts/cleanup.sh" >/dev/null' EXIT
}

# background_build LOG COMMAND...: the command in the idle scheduling class (any other
# process takes the CPU before it), its output in LOG: the builds that run beside tests.
background_build() {
  local log=$1; shift
  chrt --idle 0 nice -n 19 "$@" > "$log" 2>&1
}

# configure_build DIR [MESON_OPTION...]: a new build directory with the options, or an
# existing one reconfigured as it was set up (CC/CXX from the caller's environment).
configure_build() {
  local dir=$1
  shift
  if [ -f "$dir/build.ninja" ]; then
    meson setup --reconfigure "$dir" >/dev/null
  else
    meson setup "$dir" "$@" >/dev/null
  fi
}
