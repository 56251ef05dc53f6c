from services.campaign.server import DEFINITION
from services.shared.server import main

main(DEFINITION)
