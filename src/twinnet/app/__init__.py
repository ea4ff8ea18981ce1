"""The Streamlit app: :mod:`.page` lays out widgets; :mod:`.kit` and :mod:`.identify` hold
its logic, free of Streamlit so it is tested directly.
"""
