# The fixture as a user's suite gets it: import it into conftest.py.
from netmangle_client import netmangle  # noqa: F401
