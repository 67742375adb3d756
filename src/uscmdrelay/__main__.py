# Entry point for `python3 -m uscmdrelay` and for the zipapp (whose top-level __main__.py is
# a copy of this file). It must stay valid Python 2 syntax: an old interpreter has to get
# this one-line message instead of a SyntaxError from the modules it cannot parse.
import sys

if sys.version_info < (3, 6):
    sys.stderr.write("uscmdrelay needs Python 3.6 or newer; this is Python %d.%d.%d\n"
                     % tuple(sys.version_info[:3]))
    sys.exit(1)

# `--version` alone is answered before the command line's modules are imported: a zipapp
# has no bytecode cache, so they would be compiled on every run just to print one line.
# The text is argparse's for the same flag (tests/test_cli.py compares the two).
if sys.argv[1:] == ["--version"]:
    from uscmdrelay import __version__
    sys.stdout.write("uscmdrelay %s\n" % __version__)
    sys.exit(0)


def _compile_modules_once():
    """Run from the zipapp, makes each module compile once instead of twice.

    zipimporter.get_filename() compiles a module to learn its file name, and the import
    system asks for that name before it compiles the module again to run it (CPython
    gh-141276, in 3.6 to 3.13 at least): half of the server's start-up went into the
    second compile. This importer answers the name from the archive's table instead.
    """
    import os
    import zipimport
    archive = sys.path[0]
    if not isinstance(sys.path_importer_cache.get(archive), zipimport.zipimporter):
        return  # `python3 -m uscmdrelay`: the modules come from a directory

    class Importer(zipimport.zipimporter):
        def get_filename(self, fullname):
            name = fullname.rpartition(".")[2]
            # is_package raises ZipImportError for a name not in the archive, as the
            # original get_filename does. The build puts no .pyc in it: always .py.
            if self.is_package(fullname):
                name = os.path.join(name, "__init__")
            return os.path.join(self.archive, self.prefix + name + ".py")

    for path in (archive, os.path.join(archive, "uscmdrelay")):
        sys.path_importer_cache[path] = Importer(path)


_compile_modules_once()

from uscmdrelay.cli import main  # noqa: E402  (after the version check, on purpose)

sys.exit(main())
