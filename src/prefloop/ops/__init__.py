"""Operations on run folders and servers: ``prefloop doctor`` and a local PostgreSQL for tests."""
