"""moto's server, answering one request at a time.

moto applies a TransactWriteItems item by item and undoes a cancelled one by restoring a copy
of the table taken when it began, so two transactions served at once (moto gives each request
a thread) can undo each other's writes. DynamoDB's transactions are serializable; serving one
request at a time makes moto's so too. Usage: serial_moto.py HOST PORT
"""

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

one_at_a_time = threading.Lock()
app = DomainDispatcherApplication(create_backend_app)


def serial(environ, start_response):
    with one_at_a_time:
        # moto's responses are whole bodies: the work is done before the lock is released.
        return list(app(environ, start_response))


run_simple(sys.argv[1], int(sys.argv[2]), serial, threaded=True)
