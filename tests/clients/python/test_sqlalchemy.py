"""SQLAlchemy 2: the ORM on psycopg (sync) and on asyncpg (asyncio)."""
import asyncio

from sqlalchemy import ForeignKey, String, create_engine, func, select, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from pgsplit_env import HOST, PORT, catch_up, on_primary, spread


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "sa_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    balance: Mapped[int]


class Entry(Base):
    __tablename__ = "sa_entry"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("sa_account.id"))
    amount: Mapped[int]


def sync():
    engine = create_engine(f"postgresql+psycopg://postgres@{HOST}:{PORT}/postgres")
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    catch_up()
    with Session(engine) as s, s.begin():
        s.add_all([Account(name=f"a{i}", balance=100) for i in range(10)])
    with Session(engine) as s, s.begin():
        on_primary(s.execute(text("SELECT inet_server_port()")).scalar(), "ORM transaction")
        acct = s.execute(select(Account).where(Account.name == "a1").with_for_update()).scalar_one()
        acct.balance -= 10
        s.add(Entry(account_id=acct.id, amount=-10))
    # Autocommit reads go to the replicas.
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    with auto.connect() as c:
        ports = [c.execute(text("SELECT inet_server_port()")).scalar() for _ in range(30)]
        spread(ports, "autocommit reads")
        total = c.execute(text("/* pgsplit:primary */ SELECT sum(balance) FROM sa_account")).scalar()
        assert total == 990, total
    engine.dispose()


async def asyncio_engine():
    engine = create_async_engine(f"postgresql+asyncpg://postgres@{HOST}:{PORT}/postgres")
    async with engine.begin() as c:
        on_primary((await c.execute(text("SELECT inet_server_port()"))).scalar(), "async transaction")
        await c.execute(text("UPDATE sa_account SET balance = balance + 1 WHERE name = 'a2'"))
        n = (await c.execute(select(func.count()).select_from(Account))).scalar()
        assert n == 10
    auto = engine.execution_options(isolation_level="AUTOCOMMIT")
    async with auto.connect() as c:
        ports = [(await c.execute(text("SELECT inet_server_port()"))).scalar() for _ in range(30)]
        spread(ports, "async autocommit reads")
    await engine.dispose()


sync()
asyncio.run(asyncio_engine())
print("sqlalchemy ok")
