"""moto's server, answering one request at a time.

moto applies a TransactWriteItems item by item and undoes a cancelled one by restoring a copy
of the table taken when it began, so two transactions served at once (moto gives each request
a thread) can undo each other's writes. DynamoDB's transactions are serializable; serving one
request at a time makes moto's so too.

That copy is also slow: moto deep-copies the whole table once per item of the transaction, so a
transaction's cost grows with the table (about 50 ms at a few thousand items, enough to make a
few hundred calls through a gateway take minutes). Served one at a time, a transaction can be
undone item by item instead: the items it touches are kept before it runs and put back if it
is cancelled, which is what the table copy achieves, at the cost of the items alone.
Written against moto 5.2 (tests/e2e/requirements.txt pins it). Usage: serial_moto.py HOST PORT
"""

import copy
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple


class TablesWithoutCopies(dict):
    """The backend's tables, looked like absent to moto's `table_name in self.tables` test
    before its copy, so that it copies none; every other lookup (`get`, `[]`) is unchanged."""

    def __contains__(self, name):
        return False


def transact_write_items(self, transact_items):
    kept = []
    for entry in transact_items:
        for operation, request in entry.items():
            if operation not in ("Put", "Update", "Delete", "ConditionCheck"):
                continue
            table_name = request.get("TableName")
            try:
                table = self.get_table(table_name)
            except Exception:
                continue  # moto refuses the transaction itself
            if operation == "Put":
                attributes = request["Item"]
                key = {table.hash_key_attr: attributes[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attributes[table.range_key_attr]
            else:
                key = request["Key"]
            kept.append((table_name, key, copy.deepcopy(self.get_item(table_name, key))))
    tables = self.tables
    self.tables = TablesWithoutCopies(tables)
    try:
        original_transact_write_items(self, transact_items)
    except Exception:
        for table_name, key, item in reversed(kept):
            if item is None:
                if self.get_item(table_name, key) is not None:
                    self.delete_item(table_name, key)
            else:
                self.put_item(table_name, item.to_json()["Attributes"])
        raise
    finally:
        # Tables made or dropped meanwhile (none: requests are served one at a time) would be
        # in `self.tables`, not `tables`.
        tables.clear()
        tables.update(self.tables)
        self.tables = tables


original_transact_write_items = DynamoDBBackend.transact_write_items
DynamoDBBackend.transact_write_items = transact_write_items

one_at_a_time = threading.Lock()
app = DomainDispatcherApplication(create_backend_app)


def serial(environ, start_response):
    with one_at_a_time:
        # moto's responses are whole bodies: the work is done before the lock is released.
        return list(app(environ, start_response))


run_simple(sys.argv[1], int(sys.argv[2]), serial, threaded=True)
