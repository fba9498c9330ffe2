# Durable records: the littlefs journal and the event records built and MACed into it.
package("seal", files=("__init__.py", "journal.py", "events.py"), base_path="..")
