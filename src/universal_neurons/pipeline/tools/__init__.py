"""Commands that are not pipeline stages (they write nothing DVC tracks), one module each;
a module's ``COMMAND`` declares it."""
