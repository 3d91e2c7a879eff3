"""The Streamlit layer: session state and cached library calls shared by the pages."""
