"""Django ORM on psycopg 3 through pgsplit: what Django users write, and the seminar-signup
race (many workers, atomic() + select_for_update(), capacity N: exactly N participants)."""
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "djangoapp"))

import django
from django.conf import settings

from pgsplit_env import HOST, PORT, catch_up, on_primary, on_replica, spread

DATABASE = {
    "ENGINE": "django.db.backends.postgresql",
    "HOST": HOST,
    "PORT": PORT,
    "NAME": "postgres",
    "USER": "postgres",
    "CONN_MAX_AGE": 0,
    "OPTIONS": {},
}

settings.configure(
    DATABASES={
        "default": DATABASE,
        # psycopg 3 server-side binding: Django's TimeZone set-up becomes
        # `SELECT set_config('TimeZone', $1, false)` with a bound parameter.
        "bound": {**DATABASE, "TIME_ZONE": "Asia/Tokyo", "OPTIONS": {"server_side_binding": True}},
    },
    INSTALLED_APPS=["seminar"],
    USE_TZ=True,
    TIME_ZONE="Europe/Paris",
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, connections, transaction  # noqa: E402
from django.db.models import F  # noqa: E402
from seminar.models import Counter, Participant, Seminar  # noqa: E402


def port():
    with connection.cursor() as c:
        c.execute("SELECT inet_server_port()")
        return c.fetchone()[0]


with connection.cursor() as c:
    c.execute("DROP TABLE IF EXISTS seminar_participant, seminar_seminar, seminar_counter, django_migrations CASCADE")
call_command("migrate", run_syncdb=True, verbosity=0)
catch_up()

# Reads outside transactions go to the replicas even though Django sets the time zone with
# set_config on every new connection.
spread([port() for _ in range(30)], "reads outside atomic()")
with connection.cursor() as c:
    c.execute("SHOW TimeZone")
    assert c.fetchone()[0] in ("UTC", "Etc/UTC"), "Django's connection time zone was lost"

# The same with server-side binding: the bound set_config is replayed, not pinned, and every
# server that answers has the configured zone.
bound = connections["bound"]
ports = []
for _ in range(30):
    with bound.cursor() as c:
        c.execute("SELECT inet_server_port(), current_setting('TimeZone')")
        p, tz = c.fetchone()
    assert tz == "Asia/Tokyo", f"server-side binding: TimeZone {tz} on {p}"
    ports.append(p)
spread(ports, "reads outside atomic() with server_side_binding")
with transaction.atomic(using="bound"):
    with bound.cursor() as c:
        c.execute("SELECT inet_server_port(), current_setting('TimeZone')")
        p, tz = c.fetchone()
    on_primary(p, "atomic() with server_side_binding")
    assert tz == "Asia/Tokyo", f"server-side binding in atomic(): TimeZone {tz}"
bound.close()

with transaction.atomic():
    on_primary(port(), "atomic()")
    s = Seminar.objects.create(title="Rust", capacity=5)
    Seminar.objects.filter(pk=s.pk).update(seats_taken=F("seats_taken") + 0)

# bulk_create, get_or_create, F() updates.
Participant.objects.bulk_create([Participant(seminar=s, name=f"bulk{i}") for i in range(3)])
obj, created = Counter.objects.get_or_create(key="hits")
assert created
catch_up()  # get_or_create reads first, outside a transaction: on a replica
obj2, created2 = Counter.objects.get_or_create(key="hits")
assert not created2 and obj2.pk == obj.pk
Counter.objects.filter(key="hits").update(value=F("value") + 5)
with transaction.atomic():
    assert Counter.objects.select_for_update().get(key="hits").value == 5
Participant.objects.filter(name__startswith="bulk").delete()

# select_for_update variants.
with transaction.atomic():
    list(Seminar.objects.select_for_update(nowait=True).filter(pk=s.pk))
    list(Seminar.objects.select_for_update(skip_locked=True).filter(pk=s.pk))
    list(Participant.objects.select_related("seminar").select_for_update(of=("self",)).filter(seminar=s))
    on_primary(port(), "select_for_update")

# Sequences: the next id is always fresh.
ids = [Counter.objects.create(key=f"k{i}").pk for i in range(5)]
assert ids == sorted(ids) and len(set(ids)) == 5

# Reads outside transactions, through the ORM.
on_replica(port(), "plain read")
catch_up()
assert Seminar.objects.filter(title="Rust").exists()

# The race: 20 workers, capacity 5.
seminar = Seminar.objects.create(title="Race", capacity=5)
errors = []


def worker(i):
    try:
        with transaction.atomic():
            sem = Seminar.objects.select_for_update().get(pk=seminar.pk)
            if sem.seats_taken < sem.capacity:
                Participant.objects.create(seminar=sem, name=f"w{i}")
                sem.seats_taken = F("seats_taken") + 1
                sem.save(update_fields=["seats_taken"])
    except Exception as e:  # noqa: BLE001
        errors.append(repr(e))
    finally:
        connections.close_all()


threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not errors, errors
with transaction.atomic():
    n = Participant.objects.filter(seminar=seminar).count()
    taken = Seminar.objects.get(pk=seminar.pk).seats_taken
assert n == 5 and taken == 5, f"capacity 5, got {n} participants and {taken} seats taken"
print("django ok")
