"""The Azure Functions app (Python v2 model): creates the app and registers the blueprints, nothing else."""
import azure.functions as func

from notifications.functions import bp as mailer
from sync.functions.changes_api import bp as changes_api
from sync.functions.directory_api import bp as directory_api
from sync.functions.group_worker import bp as group_worker
from sync.functions.meta_api import bp as meta_api
from sync.functions.nightly import bp as nightly
from sync.functions.notify_api import bp as notify_api
from sync.functions.recovery_timer import bp as recovery_timer
from sync.functions.reminders_timer import bp as reminders_timer
from sync.functions.users_api import bp as users_api
from sync.functions.webhooks_api import bp as webhooks_api

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
for blueprint in (meta_api, directory_api, notify_api, users_api, group_worker, nightly, changes_api, webhooks_api,
                  mailer, recovery_timer, reminders_timer):
    app.register_functions(blueprint)
