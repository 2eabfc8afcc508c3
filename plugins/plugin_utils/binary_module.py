# -*- coding: utf-8 -*-
# Copyright: pgshift developers
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The action behind every pgshift.cluster module: run the module binary from a cache on the host.

Ansible would copy a binary module (3 MB) and an arguments file to the host on every task and
run it with several SSH commands. Instead, each host keeps the binary for its architecture in a
content-addressed cache (``~/.ansible/pgshift`` of the user the module runs as, or
``pgshift_module_cache``), and a task is ONE remote command: check the cached binary, then
``exec`` it with the arguments on stdin. Only when the binary for this version is missing
(or not to be trusted) is it sent, through stdin again, then checked against its SHA-256 and
renamed into place; the task then runs as on a hit. Nothing is ever written to a temporary
file on the host, so ``ANSIBLE_KEEP_REMOTE_FILES`` has no secret to keep.

Trust: the cache directory must be a directory (not a link) owned by the user, mode 0700, in a
parent owned by that user or root that nobody else can write; the binary a regular file owned
by the user whose identity (device, inode, size, times, mode, links) matches what was recorded
when it was uploaded and its SHA-256 checked. A cache directory that others could write is
emptied and made 0700 again, a binary that is not the uploaded one is replaced, both with a
warning; a cache directory or parent that belongs to someone else is refused.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_bytes
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display
from ansible.vars.clean import remove_internal_keys

try:  # ansible-core 2.19+: the encoder Ansible itself uses for a binary module's arguments
    from ansible.module_utils.common.json import Direction, get_module_encoder

    def _ansible_encode(args):
        return json.dumps(args, cls=get_module_encoder("legacy", Direction.CONTROLLER_TO_MODULE))

except ImportError:  # older: the encoder of AnsiballZ's arguments (vaulted values as text)
    from ansible.module_utils.common.json import AnsibleJSONEncoder

    def _ansible_encode(args):
        return json.dumps(args, cls=AnsibleJSONEncoder, vault_to_text=True)


def _encode_args(args):
    """Plain JSON values (strings, also tagged ones, which are str subclasses) as json writes
    them; anything else (a vaulted value, a date) raises TypeError there and goes through
    Ansible's encoder. Loading that encoder costs about a millisecond in each task's fresh
    worker process, a tenth of what a task adds to Ansible's own cost."""
    try:
        return json.dumps(args)
    except TypeError:
        return _ansible_encode(args)


display = Display()

COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN_DIR = os.path.join(COLLECTION_ROOT, "binaries")
DEFAULT_CACHE = "~/.ansible/pgshift"
# Binaries kept per cache directory (the one just uploaded included); older ones are removed.
KEEP = 3
MARK = "PGSHIFT-CACHE:"
# stat's view of a file that must not change between the upload and every later run (times with
# their nanoseconds: a rewrite within the same second must show).
IDENTITY = "%d:%i:%s:%y:%z:%a:%h:%u"


class BinaryModuleAction(ActionBase):
    """Subclasses set MODULE, the module's short name."""

    MODULE = None
    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = False
        result = super(BinaryModuleAction, self).run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}

        binaries = self._binaries()
        cache = self._cache_dir(task_vars)
        self._refuse_su_password()

        args = dict(self._task.args)
        self._update_module_args("pgshift.cluster." + self.MODULE, args, task_vars)
        stdin = to_bytes(_encode_args(args), errors="surrogate_or_strict")

        warnings = []
        res = self._run_cached(cache, binaries, stdin)
        state = _cache_state(res)
        if state is not None:
            kind, arch, detail = state
            problem = self._cache_problem(kind, arch, detail, cache, binaries)
            if problem is not None:
                warnings.append(problem)
            for repair, mode in self._upload(cache, arch, binaries[arch]):
                if repair == "wiped" and kind != "dir-open":
                    warnings.append(self._cache_problem("dir-open", arch, mode, cache, binaries))
            res = self._run_cached(cache, binaries, stdin)
            state = _cache_state(res)
            if state is not None:
                raise AnsibleActionFail(
                    "pgshift.cluster: the module binary was uploaded to %s but is still not usable there (%s: %s)"
                    % (cache, state[0], state[2]))

        data = self._parse(res)
        if data.pop("_ansible_suppress_tmpdir_delete", False):
            self._cleanup_remote_tmp = False
        remove_internal_keys(data)
        if warnings:
            data["warnings"] = warnings + list(data.get("warnings") or [])
        result.update(data)
        return result

    # -- what the controller has --------------------------------------------------------------

    def _binaries(self):
        """{arch: {"path", "sha256", "size"}} for every architecture this collection ships."""
        manifest = os.path.join(BIN_DIR, "manifest.json")
        try:
            with open(manifest) as f:
                listed = json.load(f)
        except (OSError, ValueError) as e:
            raise AnsibleActionFail(
                "pgshift.cluster: cannot read %s (%s): this collection was built without its binaries "
                "(run `make build` in a checkout, or install a built collection)" % (manifest, e))
        found = {}
        for arch, files in sorted(listed.items()):
            entry = files.get("pgshift-module")
            if not entry or not re.match(r"^[a-z0-9_]+$", arch) or not re.match(r"^[0-9a-f]{64}$", entry["sha256"]):
                continue
            path = os.path.join(BIN_DIR, arch, "pgshift-module")
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            if size != entry["size"]:
                raise AnsibleActionFail(
                    "pgshift.cluster: %s is %d bytes but %s says %d: the binaries and their manifest come from "
                    "different builds (run `make build`)" % (path, size, manifest, entry["size"]))
            found[arch] = {"path": path, "sha256": entry["sha256"], "size": size}
        if not found:
            raise AnsibleActionFail("pgshift.cluster: %s lists no module binary" % manifest)
        return found

    def _cache_dir(self, task_vars):
        raw = task_vars.get("pgshift_module_cache", DEFAULT_CACHE)
        value = self._templar.template(raw) if isinstance(raw, str) else raw
        if not isinstance(value, str) or not (value.startswith("/") or value.startswith("~/")) \
                or any(c in value for c in "\n\r\0") or value.rstrip("/") in ("", "~"):
            raise AnsibleActionFail(
                "pgshift_module_cache must be an absolute path or start with ~/ (the home of the user the "
                "module runs as), got %r" % (value,))
        value = value.rstrip("/")
        if os.path.dirname(value) in ("/", "~"):
            raise AnsibleActionFail(
                "pgshift_module_cache %r: the cache needs a parent directory of its own (e.g. ~/.ansible/pgshift)" % value)
        return value

    def _refuse_su_password(self):
        """su reads its password from a terminal, and a terminal cannot carry the arguments: with a
        become password, Ansible waits for su's prompt and the arguments never arrive."""
        become = self._connection.become
        if become is None or getattr(become, "name", "").split(".")[-1] != "su":
            return
        try:
            password = become.get_option("become_pass")
        except KeyError:
            password = None
        if password:
            raise AnsibleActionFail(
                "pgshift.cluster modules send their arguments on stdin, and `become_method: su` with a password "
                "needs the terminal for that password. Use become_method sudo (its password goes through stdin "
                "first), or connect as root with no become password set (su then asks for none), or connect as "
                "the user the module must run as.")

    # -- the remote commands ------------------------------------------------------------------

    def _shell_path(self, cache):
        """The cache directory as a shell word: ~/ becomes "$HOME"/ (the user the command runs as)."""
        if cache.startswith("~/"):
            return '"$HOME"/' + shlex.quote(cache[2:])
        return shlex.quote(cache)

    def _preamble(self, cache, binaries):
        """Sets d (cache), p (its parent), a (architecture), h (SHA-256) and f (binary)."""
        lines = ["umask 077"]
        if cache.startswith("~/"):
            lines.append('[ -n "${HOME:-}" ] || { echo "%sno-home::"; exit 0; }' % MARK)
        lines += [
            "d=" + self._shell_path(cache),
            'p=${d%/*}',
            # Linux names its architecture in /proc (a builtin read, no process); uname elsewhere.
            'if read -r m 2>/dev/null </proc/sys/kernel/arch; then set -- Linux "$m"; else set -- $(uname -sm); fi',
            'case "$1 $2" in',
        ]
        for arch, b in sorted(binaries.items()):
            lines.append('"Linux %s") a=%s h=%s ;;' % (arch, arch, b["sha256"]))
        lines += [
            '*) echo "%sunsupported:$1 $2:"; exit 0 ;;' % MARK,
            "esac",
            'f=$d/pgshift-module-$a-$h',
        ]
        return lines

    @staticmethod
    def _parent_checks():
        """The parent exists (else: missing), is a directory owned by us or root, and only its owner writes it."""
        return [
            'ps=$(stat -c "%u %a" "$p" 2>/dev/null) || { echo "' + MARK + 'missing:$a:"; exit 0; }',
            'if [ -L "$p" ] || [ ! -d "$p" ]; then echo "' + MARK + 'parent-unsafe:$a:not a directory"; exit 0; fi',
            'if [ ! -O "$p" ] && [ "${ps%% *}" != 0 ]; then echo "' + MARK + 'parent-unsafe:$a:owned by uid ${ps%% *}"; exit 0; fi',
            'case ${ps#* } in *[2367]?|*[2367]) echo "' + MARK + 'parent-unsafe:$a:mode ${ps#* }"; exit 0 ;; esac',
        ]

    def _run_cached(self, cache, binaries, stdin):
        """On a hit, execs the binary with the arguments on stdin: one child process before it
        (stat; uname too where /proc has no kernel/arch), the other checks are shell builtins."""
        env = self._compute_environment_string() or ""
        lines = self._preamble(cache, binaries) + [
            'if [ ! -e "$p" ] && [ ! -L "$p" ]; then echo "' + MARK + 'missing:$a:"; exit 0; fi',
            'if [ -L "$p" ] || [ ! -d "$p" ]; then echo "' + MARK + 'parent-unsafe:$a:not a directory"; exit 0; fi',
            'if [ ! -e "$d" ] && [ ! -L "$d" ]; then echo "' + MARK + 'missing:$a:"; exit 0; fi',
            'if [ -L "$d" ] || [ ! -d "$d" ] || [ ! -O "$d" ]; then echo "' + MARK + 'dir-foreign:$a:"; exit 0; fi',
            'if [ ! -e "$f" ] && [ ! -L "$f" ]; then echo "' + MARK + 'missing:$a:"; exit 0; fi',
            'if [ -L "$f" ] || [ ! -f "$f" ] || [ ! -O "$f" ]; then echo "' + MARK + 'replaced:$a:not a regular file of this user"; exit 0; fi',
            # One stat for the three: "<uid> <mode> <identity>" each.
            's=$(stat -c "%u %a ' + IDENTITY + '" "$p" "$d" "$f") || { echo "' + MARK + 'missing:$a:"; exit 0; }',
            "IFS='",
            "'; set -f; set -- $s; set +f; unset IFS",
            'pu=${1%% *}; pm=${1#* }; pm=${pm%% *}; dm=${2#* }; dm=${dm%% *}; fid=${3#* }; fid=${fid#* }',
            'if [ ! -O "$p" ] && [ "$pu" != 0 ]; then echo "' + MARK + 'parent-unsafe:$a:owned by uid $pu"; exit 0; fi',
            'case $pm in *[2367]?|*[2367]) echo "' + MARK + 'parent-unsafe:$a:mode $pm"; exit 0 ;; esac',
            'case $dm in 700) ;; *[2367]?|*[2367]) echo "' + MARK + 'dir-open:$a:$dm"; exit 0 ;;'
            ' *) echo "' + MARK + 'dir-mode:$a:$dm"; exit 0 ;; esac',
            'ok=; read -r ok <"$f.ok" 2>/dev/null || :',
            '[ "$fid" = "$ok" ] || { echo "' + MARK + 'replaced:$a:changed since it was uploaded"; exit 0; }',
            ("%s exec " % env if env else "exec ") + '"$f" -',
        ]
        return self._low_level_execute_command("\n".join(lines), sudoable=True, in_data=stdin)

    def _upload(self, cache, arch, binary):
        """Sends the binary on stdin; returns the kinds of repair the host reported ("wiped")."""
        display.vvv("pgshift.cluster: uploading %s (%d bytes) to the cache %s" % (binary["path"], binary["size"], cache),
                    host=self._play_context.remote_addr)
        with open(binary["path"], "rb") as f:
            data = f.read()
        lines = self._preamble(cache, {arch: binary}) + ['mkdir -p "$p" || exit 1'] + self._parent_checks() + [
            '[ -e "$d" ] || [ -L "$d" ] || mkdir "$d" || exit 1',
            'if [ -L "$d" ] || [ ! -d "$d" ] || [ ! -O "$d" ]; then echo "' + MARK + 'dir-foreign:$a:"; exit 0; fi',
        ]
        lines += [
            # Others could write here: nothing in it is to be trusted any more.
            'dm=$(stat -c %a "$d") || exit 1',
            'case $dm in *[2367]?|*[2367]) find "$d" -mindepth 1 -delete || exit 1; echo "' + MARK + 'wiped:$a:$dm" ;; esac',
            'chmod 700 "$d" || exit 1',
            't=$d/.upload-$$',
            'rm -f "$t" && cat >"$t" || { rm -f "$t"; exit 1; }',
            'set -- $(sha256sum "$t")',
            'if [ "$1" != "$h" ]; then rm -f "$t"; echo "' + MARK + 'corrupt:$a:sha256 $1"; exit 0; fi',
            'chmod 700 "$t" && mv -f "$t" "$f" || exit 1',
            # The identity after the rename (which changes the ctime), checked before every run.
            'stat -c "' + IDENTITY + '" "$f" >"$f.ok.$$" && mv -f "$f.ok.$$" "$f.ok" || exit 1',
            'ls -1t "$d" | grep -E "^pgshift-module-[a-z0-9_]+-[0-9a-f]{64}$" | tail -n +%d |' % (KEEP + 1),
            ' while read -r old; do rm -f "$d/$old" "$d/$old.ok"; done',
            'echo "' + MARK + 'uploaded:$a:"',
        ]
        res = self._low_level_execute_command("\n".join(lines), sudoable=True, in_data=data)
        states = _cache_states(res)
        if states and states[-1][0] in ("parent-unsafe", "dir-foreign", "no-home", "unsupported"):
            self._cache_problem(states[-1][0], arch, states[-1][2], cache, {arch: binary})  # raises
        if not states or states[-1][0] != "uploaded":
            state = states[-1] if states else None
            why = "%s: %s" % (state[0], state[2]) if state else (res.get("stderr") or res.get("stdout") or "").strip()
            raise AnsibleActionFail("pgshift.cluster: could not upload the module binary to %s (rc %s): %s"
                                    % (cache, res.get("rc"), why))
        return [(kind, detail) for kind, _arch, detail in states[:-1]]

    def _cache_problem(self, kind, arch, detail, cache, binaries):
        """A warning for a cache that gets repaired, or a failure for one that cannot be."""
        where = "%s (as %s)" % (cache, self._running_as())
        if kind == "unsupported":
            raise AnsibleActionFail(
                "pgshift.cluster ships its module binary for Linux on %s; this host is %s"
                % (" and ".join(sorted(binaries)), arch or "unknown"))
        if kind == "no-home":
            raise AnsibleActionFail(
                "pgshift.cluster: HOME is not set for the user the module runs as, so there is no %s; "
                "set pgshift_module_cache to an absolute path" % cache)
        if kind == "parent-unsafe":
            raise AnsibleActionFail(
                "pgshift.cluster: the parent of the module cache %s is not safe (%s): it must be a directory owned by "
                "this user or root that nobody else can write. Fix it, or set pgshift_module_cache elsewhere."
                % (where, detail))
        if kind == "dir-foreign":
            raise AnsibleActionFail(
                "pgshift.cluster: the module cache %s is not a directory of this user (a link, a file or another "
                "user's directory): refusing to run anything from it. Remove it, or set pgshift_module_cache elsewhere."
                % where)
        if arch not in binaries:
            raise AnsibleActionFail("pgshift.cluster: no module binary for %s in this collection" % arch)
        if kind == "dir-open":
            return ("pgshift.cluster: the module cache %s had mode %s (others could write it): its contents were not "
                    "trusted and were removed, the directory is 0700 again and the module binary was uploaded anew"
                    % (where, detail))
        if kind == "dir-mode":
            return ("pgshift.cluster: the module cache %s had mode %s instead of 0700: made 0700 again and the module "
                    "binary uploaded anew" % (where, detail))
        if kind == "replaced":
            return ("pgshift.cluster: the cached module binary in %s was refused (%s): it was replaced by the "
                    "collection's binary" % (where, detail))
        if kind == "missing":
            return None
        raise AnsibleActionFail("pgshift.cluster: unexpected answer from the module cache %s: %s %s" % (where, kind, detail))

    def _running_as(self):
        become = self._connection.become
        if become is not None and self._play_context.become:
            return self.get_become_option("become_user") or "root"
        return self._get_remote_user() or "the login user"

    def _parse(self, res):
        params = inspect.signature(self._parse_returned_data).parameters
        if len(params) >= 2:  # ansible-core 2.19+: (res, profile)
            return self._parse_returned_data(res, "legacy")
        return self._parse_returned_data(res)


def _cache_states(res):
    """Every (kind, arch, detail) the remote command said about the cache, in order."""
    states = []
    for line in (res.get("stdout") or "").splitlines():
        if line.startswith(MARK):
            kind, rest = (line[len(MARK):].split(":", 1) + [""])[:2]
            arch, detail = (rest.split(":", 1) + [""])[:2]
            states.append((kind, arch, detail))
    return states


def _cache_state(res):
    """(kind, arch, detail) when the remote command answered about the cache instead of running."""
    states = _cache_states(res)
    return states[0] if states else None
