"""The real ``Windows`` seam: the only code here that calls Win32 (registry, processes).

Kept to plain calls so that everything deciding *what* to do stays testable on Linux.
"""

from __future__ import annotations

import subprocess
import sys

from app.winsvc.system import Completed, RegValue

if sys.platform == "win32":  # pragma: no cover - Windows only
    import ctypes
    import winreg

    _HIVES = {"HKCU": winreg.HKEY_CURRENT_USER, "HKLM": winreg.HKEY_LOCAL_MACHINE}

    def _split(key: str) -> tuple[int, str]:
        hive, _, path = key.partition("\\")
        return _HIVES[hive.upper()], path

    class RealWindows:
        def run(self, command_line: str) -> Completed:
            # A string is handed to CreateProcess unchanged: exactly what we built.
            result = subprocess.run(
                command_line,
                capture_output=True,
                stdin=subprocess.DEVNULL,
                creationflags=subprocess.CREATE_NO_WINDOW,
                check=False,
            )
            output = (result.stdout + result.stderr).decode("mbcs", errors="replace")
            return Completed(result.returncode, output)

        def is_admin(self) -> bool:
            try:
                return bool(ctypes.windll.shell32.IsUserAnAdmin())
            except OSError:
                return False

        def reg_values(self, key: str) -> list[RegValue]:
            hive, path = _split(key)
            try:
                handle = winreg.OpenKey(hive, path)
            except OSError:
                return []
            values = []
            with handle:
                index = 0
                while True:
                    try:
                        name, data, kind = winreg.EnumValue(handle, index)
                    except OSError:
                        break
                    if isinstance(data, (str, int)):
                        values.append(RegValue(name, kind, data))
                    index += 1
            return values

        def reg_subkeys(self, key: str) -> list[str]:
            hive, path = _split(key)
            try:
                handle = winreg.OpenKey(hive, path)
            except OSError:
                return []
            names = []
            with handle:
                index = 0
                while True:
                    try:
                        names.append(winreg.EnumKey(handle, index))
                    except OSError:
                        break
                    index += 1
            return names

        def reg_set(self, key: str, value: RegValue) -> None:
            hive, path = _split(key)
            with winreg.CreateKey(hive, path) as handle:
                winreg.SetValueEx(handle, value.name, 0, value.type, value.data)

        def reg_delete(self, key: str, name: str) -> None:
            hive, path = _split(key)
            with winreg.OpenKey(hive, path, 0, winreg.KEY_SET_VALUE) as handle:
                winreg.DeleteValue(handle, name)

        def launch(self, executable: str) -> None:
            subprocess.Popen(
                [executable],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                creationflags=subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP,
                close_fds=True,
            )
