/* A stand-in ollama.exe for the Windows service test (scripts/ci-windows.sh): the service
 * in serve mode runs `ollama.exe serve`, and this runs the project's fake Ollama instead,
 *
 *     PYTHON_EXE -m tests.fake_ollama <the same arguments>
 *
 * with REPO_DIR (the checkout, seen from Windows) first on sys.path, waits for it and exits
 * with its status. (Not through PYTHONPATH: the embeddable Python ignores it.) The Python child is put in a job object that kills it when this process's
 * handle to the job closes, i.e. whenever this process ends, even by TerminateProcess: so
 * stopping "ollama.exe" stops the server behind it, as with the real single-process
 * ollama.exe.
 *
 *   x86_64-w64-mingw32-gcc -O2 -s -municode -o ollama.exe fake-ollama.c \
 *       -DPYTHON_EXE='L"C:\\py311\\python.exe"' -DREPO_DIR='L"Z:\\work\\main"'
 */
#include <windows.h>
#include <stdio.h>
#include <wchar.h>

#if !defined(PYTHON_EXE) || !defined(REPO_DIR)
#error "define PYTHON_EXE and REPO_DIR as wide string literals (see the comment above)"
#endif

/* Our own command line after the program name, quoting untouched. */
static const wchar_t *arguments(void)
{
    const wchar_t *line = GetCommandLineW();
    if (*line == L'"') {
        line = wcschr(line + 1, L'"');
        line = line ? line + 1 : L"";
    } else {
        while (*line && *line != L' ' && *line != L'\t')
            line++;
    }
    while (*line == L' ' || *line == L'\t')
        line++;
    return line;
}

static int fail(const char *what)
{
    fprintf(stderr, "fake ollama.exe: %s failed (error %lu)\n", what, GetLastError());
    return 1;
}

int wmain(void)
{
    /* python -B -u -c BOOT REPO_DIR ARGS: BOOT takes REPO_DIR off sys.argv, puts it on
     * sys.path and runs the package as `python -m` would. -B leaves the checkout without
     * a __pycache__ of the Windows Python; -u keeps the log in step. */
    static const wchar_t boot[] =
        L"import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
        L"runpy.run_module('tests.fake_ollama', run_name='__main__', alter_sys=True)";
    static wchar_t command[32768];
    _snwprintf(command, sizeof command / sizeof *command - 1, L"\"%ls\" -B -u -c \"%ls\" \"%ls\" %ls",
               PYTHON_EXE, boot, REPO_DIR, arguments());

    HANDLE job = CreateJobObjectW(NULL, NULL);
    if (job == NULL)
        return fail("CreateJobObject");
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION limits = {0};
    limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    if (!SetInformationJobObject(job, JobObjectExtendedLimitInformation, &limits, sizeof limits))
        return fail("SetInformationJobObject");

    STARTUPINFOW startup = {0};
    startup.cb = sizeof startup;
    startup.dwFlags = STARTF_USESTDHANDLES;
    startup.hStdInput = GetStdHandle(STD_INPUT_HANDLE);
    startup.hStdOutput = GetStdHandle(STD_OUTPUT_HANDLE);
    startup.hStdError = GetStdHandle(STD_ERROR_HANDLE);
    PROCESS_INFORMATION child;
    /* Suspended until it is in the job, so that nothing it starts escapes the job. */
    if (!CreateProcessW(PYTHON_EXE, command, NULL, NULL, TRUE, CREATE_SUSPENDED, NULL, NULL,
                        &startup, &child))
        return fail("CreateProcess");
    if (!AssignProcessToJobObject(job, child.hProcess)) {
        /* Where jobs cannot nest, a child of a process that is in a job (the service puts
         * Ollama in one) is in that job already, and ends with it. */
        BOOL in_job = FALSE;
        if (!IsProcessInJob(child.hProcess, NULL, &in_job) || !in_job) {
            TerminateProcess(child.hProcess, 1);
            return fail("AssignProcessToJobObject");
        }
        fprintf(stderr, "fake ollama.exe: the server is in our parent's job (error %lu)\n",
                GetLastError());
    }
    ResumeThread(child.hThread);
    CloseHandle(child.hThread);

    DWORD status = 1;
    WaitForSingleObject(child.hProcess, INFINITE);
    GetExitCodeProcess(child.hProcess, &status);
    CloseHandle(child.hProcess);
    CloseHandle(job);
    return (int)status;
}
