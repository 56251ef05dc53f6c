from services.shared.server import main
from services.tenant.server import DEFINITION

main(DEFINITION)
