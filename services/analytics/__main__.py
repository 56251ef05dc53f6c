from services.analytics.server import DEFINITION
from services.shared.server import main

main(DEFINITION)
